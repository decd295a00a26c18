"""The model card's file format: written beside every export and logged with the run, read by whoever uses the model.

A card has a JSON form (for tools) and a Markdown form (for people), written
side by side by :func:`write`; :func:`read` gives the JSON back. What goes into
a card is :mod:`dist_syndr.export.cards`'s business; this module owns the files
and the facts consumers read from them (the training labels' own scale).

Shapes: none.
"""

from __future__ import annotations

import json
from pathlib import Path

from dist_syndr import files
from dist_syndr.config import Config
from dist_syndr.pools.scores import LabelScale
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet

CARD_NAME = "model_card.json"


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
    weights = model.get("weights") or {}
    if weights.get("source"):
        lines.append(f"- Pretrained weights: `{weights['source']}` (sha256 {weights['sha256']})")
    elif weights:
        lines.append(f"- Pretrained weights: {weights.get('config') or 'none'}")
    if "export" in card:
        lines.append(
            f"- File: `{card['export']['file']}` ({card['export']['format']}, sha256 {card['export']['sha256']})"
        )
    lines += [
        f"- Input: {data['tensor']}; normalise with mean {data['normalisation']['mean']} and std "
        f"{data['normalisation']['std']} after dividing pixels by 255",
        f"- Crops: {data.get('crop_protocol', data['crops'])}; {data['output']}",
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
