"""The model card written beside every export and logged with the run: what the model is and how to feed it.

Training writes ``export/model_card.json`` when it exports its weights (it knows the
training set, the kept counts and the metrics); ``launchers/export.py`` starts from
that file and adds the format, the file's sha256 and the input it takes. A card
has a JSON form (for tools) and a Markdown form (for people), written side by side.

Shapes: none.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dist_syndr import config as config_module
from dist_syndr import files
from dist_syndr.config import Config
from dist_syndr.features.preprocess import IMAGENET_MEAN, IMAGENET_STD
from dist_syndr.pools.scores import LabelScale
from dist_syndr.scoring.crops import CropProtocol
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet
from dist_syndr.tracking.tracker import git_commit

CARD_NAME = "model_card.json"
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
    return {
        "model": {"backbone": cfg.model.backbone, "image_size": cfg.model.image_size, "run_name": cfg.run_name},
        "input": {
            "tensor": f"float32 (batch, 3, {cfg.data.crop}, {cfg.data.crop}), RGB, channels first; any batch size",
            "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "scale": "pixels / 255 first"},
            "crops": protocol.describe(),
            "output": "one score per crop; an image's score is the mean over its crops",
        },
        "score_scale": "[0, 10], higher is better (training labels min-max mapped to [0, 10])",
        "training_set": {"path": cfg.train.shard_set},
        "targets": list(cfg.train.targets),
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "git_commit": git_commit(Path(__file__).parent),
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
    }


def label_scale_of(cfg: Config, run_dir: Path) -> LabelScale | None:
    """The training labels' own scale: from the run's card (``export/model_card.json``), else from the
    training set's index when it is still where the config says; None when neither knows it."""
    card = read(run_dir / "export" / CARD_NAME)
    if card is not None and "label_scale" in card.get("training_set", {}):
        return LabelScale.from_dict(card["training_set"]["label_scale"])
    if not cfg.train.shard_set or not (Path(cfg.train.shard_set) / INDEX_NAME).is_file():
        return None
    return LabelScale.from_dict(ShardSet(cfg.train.shard_set).config.get("label_scale"))


def _label_scale_text(training_set: dict) -> str:
    scale = LabelScale.from_dict(training_set.get("label_scale"))
    if scale is None:
        return ""
    return f"; on the training labels' own scale ({scale.name}) 0 is {scale.at_0:.6g} and 10 is {scale.at_10:.6g}"


def write(card: dict, json_path: Path) -> tuple[Path, Path]:
    """Write ``card`` as ``json_path`` and the Markdown beside it (same name, ``.md``), atomically."""
    files.write_text(json_path, json.dumps(card, indent=2, sort_keys=True) + "\n")
    markdown = json_path.with_suffix(".md")
    files.write_text(markdown, markdown_text(card))
    return json_path, markdown


def read(path: Path) -> dict | None:
    """A card written by :func:`write`, or None when there is none."""
    return json.loads(path.read_text()) if path.is_file() else None


def markdown_text(card: dict) -> str:
    """The card for people."""
    model, data = card["model"], card["input"]
    lines = [f"# Model card: {model['run_name']}", "", f"- Backbone: `{model['backbone']}`"]
    if "export" in card:
        lines.append(
            f"- File: `{card['export']['file']}` ({card['export']['format']}, sha256 {card['export']['sha256']})"
        )
    lines += [
        f"- Input: {data['tensor']}; normalise with mean {data['normalisation']['mean']} and std "
        f"{data['normalisation']['std']} after dividing pixels by 255",
        f"- Crops: {data['crops']}; {data['output']}",
        f"- Score scale: {card['score_scale']}{_label_scale_text(card['training_set'])}",
        f"- Training set: {_training_set_line(card['training_set'])}",
        f"- Config sha256: `{card['config_sha256']}`; code commit: `{card['git_commit']}`",
        "",
        "## Metrics",
        "",
    ]
    metrics = card.get("metrics")
    if not metrics:
        lines.append("Unknown: this checkpoint came without the card its training run writes.")
    else:
        lines += [metrics["note"], "", "| target | LAST SRCC | LAST PLCC | BEST SRCC | BEST PLCC | BEST epoch |"]
        lines.append("|---|---|---|---|---|---|")
        for target in sorted({key.split("/")[0] for key in metrics["last"]} | set(metrics["best"])):
            best = metrics["best"].get(target, {})
            cells = [metrics["last"].get(f"{target}/srcc"), metrics["last"].get(f"{target}/plcc")]
            cells += [best.get("srcc"), best.get("plcc")]
            text = ["-" if value is None else f"{value:.4f}" for value in cells]
            epoch = "-" if "epoch" not in best else str(int(best["epoch"]))
            lines.append(f"| {target} | " + " | ".join(text) + f" | {epoch} |")
    lines += ["", "## Intended use", "", card["intended_use"], "", "## Limits", "", card["limits"], ""]
    return "\n".join(lines)


def _training_set_line(facts: dict) -> str:
    counts = [f"{facts[k]} {k.replace('_', ' ')}" for k in ("samples", "upsampled", "kept_last_epoch") if facts.get(k)]
    return f"`{facts.get('path') or 'unknown'}`" + (f" ({', '.join(counts)})" if counts else "")
