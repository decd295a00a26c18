"""What a model card says: the facts of a run's config, and at the end of training its metrics and data.

Training writes ``export/model_card.json`` when it exports its weights (it knows the
training set, the kept counts and the metrics); ``launchers/export.py`` starts from
that file and adds the format, the file's sha256 and the input it takes. The file
format is :mod:`dist_syndr.runs.card`'s.

Shapes: none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from dist_syndr import config as config_module
from dist_syndr import source
from dist_syndr.config import Config
from dist_syndr.features.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dist_syndr.scoring.crops import CropProtocol

INTENDED_USE = (
    "Blind (no-reference) quality scores of natural photographs, for ranking and filtering images by perceived "
    "quality. Scores are on the scale of the training labels mapped to [0, 10] (higher is better)."
)
LIMITS = (
    "Trained on synthetic distortions (reshaped by SynDR-IQA); cross-domain accuracy is what the LAST/BEST "
    "metrics show and no more. BEST is chosen on the test set (as the paper reports it), so it is optimistic; "
    "LAST is the honest figure. Not calibrated for screen content, medical or aesthetic judgement; scores of "
    "images resized up to the crop are less reliable."
)


def training_card(cfg: Config, run_dir: Path, *, last: dict, best: dict, train_set=None, kept=None) -> dict:
    """The card's facts at the end of training: ``last`` the last epoch's metrics, ``best`` per target its best
    epoch's (``epoch`` included), ``train_set`` the training ShardSet, ``kept`` the last DRCDown kept count."""
    card = base_card(cfg, run_dir / "config.yaml")
    card["metrics"] = {
        "last": {k: float(v) for k, v in sorted(last.items()) if "/" in k},
        "best": {t: {k: float(v) for k, v in sorted(values.items())} for t, values in sorted(best.items())},
        "note": "LAST: the final epoch. BEST: each target's best epoch by SRCC, chosen on that test set.",
    }
    if train_set is not None:
        card["training_set"] = {
            "path": str(train_set.root),
            "samples": len(train_set),
            "upsampled": int(train_set.is_upsampled().sum()),
            "kept_last_epoch": None if kept is None else int(kept),
            "label_scale": train_set.config.get("label_scale"),
        }
    return card


def base_card(cfg: Config, config_path: Path | None) -> dict:
    """What any checkpoint's config says: backbone, input, scale, targets, digest, commit, use and limits."""
    protocol = CropProtocol.of_run(cfg.data.crop, cfg.data.eval_crops, cfg.data.eval_crop_mode, cfg.seed)
    text = config_path.read_text() if config_path is not None and config_path.is_file() else config_module.dump(cfg)
    model = {"backbone": cfg.model.backbone, "image_size": cfg.model.image_size, "run_name": cfg.run_name}
    model["weights"] = {
        "config": cfg.model.weights or ("random init" if cfg.model.is_random_init else ""),
        "source": cfg.model.weights_source,
        "sha256": cfg.model.weights_sha256,
        "input_statistics": {"mean": list(cfg.model.mean), "std": list(cfg.model.std)},
    }
    return {
        "model": model,
        "input": {
            "tensor": f"float32 (batch, 3, {cfg.data.crop}, {cfg.data.crop}), RGB, channels first; any batch size",
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": "pixels / 255 first"},
            "crop_protocol": protocol.describe(),
            "output": "one score per crop; an image's score is the mean over its crops",
            # the same facts for tools (the prose above is for people)
            "crop_size": protocol.size,
            "crops": protocol.num_crops,
            "crop_mode": protocol.mode,
            "seed": protocol.seed,
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
            "pixel_scale": 255,
            "layout": "NCHW",
        },
        "score_scale": "[0, 10], higher is better (training labels min-max mapped to [0, 10])",
        "training_set": {"path": cfg.train.shard_set},
        "targets": list(cfg.train.targets),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "git_commit": source.git_commit(),
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
    }
