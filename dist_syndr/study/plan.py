"""Which training runs a study is: every variant of the method times every seed, each a named run of one preset.

The four variants are the paper's ablation: the baseline trains on the original
synthetic samples only, ``ddcup`` adds DDCUp's upsampled samples, ``drcdown``
thins redundant clusters every epoch, ``both`` does both. A run differs from its
siblings only in ``seed``, ``run_name`` and the two switches, so paired runs (same
seed) share initial weights and data order.

Shapes: none.
"""

from __future__ import annotations

from dataclasses import dataclass

VARIANTS: dict[str, tuple[bool, bool]] = {  # name -> (reshape.ddcup.enabled, reshape.drcdown.enabled)
    "baseline": (False, False),
    "ddcup": (True, False),
    "drcdown": (False, True),
    "both": (True, True),
}
RESERVED_KEYS = ("seed", "run_name", "reshape.ddcup.enabled", "reshape.drcdown.enabled")


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study."""

    variant: str
    seed: int
    run_name: str
    overrides: tuple[str, ...]  # passed to launchers/train.py after the preset


def parse_variants(text: str) -> list[str]:
    """``"baseline,both"`` -> ``["baseline", "both"]``; ValueError naming an unknown variant. The baseline is
    always part of a study (every difference is taken from it)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if "baseline" not in names:
        raise ValueError("a study needs the baseline variant: every difference is measured from it")
    return sorted(set(names), key=list(VARIANTS).index)


def plan_study(name: str, variants: list[str], seeds: list[int], overrides: list[str]) -> list[StudyRun]:
    """The runs of study ``name``: ``variants x seeds``, the user's ``overrides`` first; ValueError when an
    override sets what the study itself sets."""
    clashing = [o for o in overrides if o.split("=", 1)[0].strip() in RESERVED_KEYS]
    if clashing:
        raise ValueError(f"the study sets {', '.join(RESERVED_KEYS)} itself; drop {clashing}")
    if not seeds:
        raise ValueError("a study needs at least one seed")
    runs = []
    for variant in variants:
        ddcup, drcdown = VARIANTS[variant]
        for seed in seeds:
            run_name = f"{name}-{variant}-seed{seed}"
            switches = (
                f"reshape.ddcup.enabled={str(ddcup).lower()}",
                f"reshape.drcdown.enabled={str(drcdown).lower()}",
            )
            runs.append(
                StudyRun(variant, seed, run_name, (*overrides, f"seed={seed}", f"run_name={run_name}", *switches))
            )
    return runs
