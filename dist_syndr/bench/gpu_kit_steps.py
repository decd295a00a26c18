"""The GPU kit's own two stages: installing the carried wheels, and the preflight (versions, GPU, ceilings).

:func:`install` puts the carried wheels into a folder that goes on ``PYTHONPATH``
(``pip --no-index --no-deps --target``), over the machine's own torch, after
checking each against the ``SHA256SUMS`` that ``prepare`` wrote beside them,
then imports every package the profile needs in a fresh interpreter and checks
that torch is still the machine's. In a dry run on another Python, wheels built
for the machine's Python 3.12 only are checked by hash and left out.

:func:`preflight` records what the stages ran on (Python, torch, CUDA, GPU) and
the card's two ceilings, timed with CUDA events on random data: the bf16 GEMM
rate of ``(n, n) @ (n, n)`` products (n = 8192) and the device-to-device copy
bandwidth (bytes read plus written), beside the card's datasheet bf16 peak that
``bench.py train`` computes MFU against.

Shapes: ``(n, n)`` bf16 GEMM operands; a 1 GiB float32 vector for the copy.
"""

from __future__ import annotations

import importlib.metadata
import os
import statistics
import subprocess
import sys
from pathlib import Path

from dist_syndr import files

CHECKSUMS = "SHA256SUMS"
_IMPORT_CHECK = """
import importlib, sys, torch
for name in {imports!r}:
    module = importlib.import_module(name)
    print(f"import {{name}}: {{getattr(module, '__version__', '?')}} from {{module.__file__}}")
if torch.__file__.startswith({site!r}):
    sys.exit(f"torch {{torch.__version__}} now comes from {site}: the machine's own torch was shadowed")
print(f"torch {{torch.__version__}} (CUDA {{torch.version.cuda}}) is still the machine's own: {{torch.__file__}}")
"""
_VERSIONS = ("deepspeed", "timm", "numpy", "webdataset", "pydantic", "pytest", "pytest-timeout", "nvidia-dali-cuda130")


def carried_wheels(folders: list[Path]) -> list[Path]:
    """Every wheel in ``folders``, each checked against its folder's ``SHA256SUMS``; one version per package."""
    wheels: list[Path] = []
    for folder in folders:
        found = sorted(folder.glob("*.whl"))
        if not found:
            raise ValueError(f"{folder}: no wheels (run `bash scripts/gpu_kit.sh prepare` here and carry the folder)")
        sums = folder / CHECKSUMS
        if not sums.is_file():
            raise ValueError(f"{sums}: missing; `bash scripts/gpu_kit.sh prepare` writes it beside the wheels")
        expected = dict(reversed(line.split(maxsplit=1)) for line in sums.read_text().splitlines() if line.strip())
        for wheel in found:
            if expected.get(wheel.name) != files.sha256_file(wheel):
                raise ValueError(f"{wheel}: not the wheel {sums} lists (damaged in transit, or a stray file)")
        missing = sorted(set(expected) - {wheel.name for wheel in found})
        if missing:
            raise ValueError(f"{folder}: {len(missing)} wheel(s) of {sums} did not arrive, e.g. {missing[0]}")
        wheels += found
    names = [wheel.name.split("-")[0].lower().replace("_", "-") for wheel in wheels]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"two versions of {', '.join(twice)} among the carried wheels: pip would refuse them all")
    return wheels


def installable_here(wheel: Path) -> bool:
    """True when this interpreter accepts ``wheel``'s tags."""
    from packaging.tags import sys_tags
    from packaging.utils import parse_wheel_filename

    supported = set(sys_tags())
    return any(tag in supported for tag in parse_wheel_filename(wheel.name)[3])


def install(folders: list[Path], site: Path, imports: tuple[str, ...], *, is_dry_run: bool) -> int:
    """Install the carried wheels into ``site``, then import ``imports`` with ``site`` on the path; exit code."""
    wheels = carried_wheels(folders)
    chosen = [wheel for wheel in wheels if not is_dry_run or installable_here(wheel)]
    for wheel in sorted(set(wheels) - set(chosen)):
        print(f"{wheel.name}: checked by hash; not installable on Python {sys.version_info.major}."
              f"{sys.version_info.minor} (built for the machine's)")  # fmt: skip
    site.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--upgrade", "--target", str(site)]  # fmt: skip
    completed = subprocess.run([*pip, *map(str, chosen)], text=True, capture_output=True)
    print(completed.stdout + completed.stderr, end="")
    if completed.returncode != 0:
        print(f"install: pip failed (exit {completed.returncode}) over {len(chosen)} wheels", file=sys.stderr)
        return completed.returncode
    print(f"install: {len(chosen)} of {len(wheels)} carried wheels into {site}")
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    check = _IMPORT_CHECK.format(site=str(site.resolve()), imports=list(imports))
    completed = subprocess.run([sys.executable, "-c", check], env=os.environ | {"PYTHONPATH": path})
    return completed.returncode


def preflight(out: Path, *, is_dry_run: bool) -> int:
    """Versions, the GPU and its bf16 GEMM and copy ceilings into the Markdown file ``out``; exit code."""
    import platform

    import torch

    from dist_syndr import runtime
    from dist_syndr.bench.harness import markdown_table
    from dist_syndr.bench.train import peak_flops

    if not runtime.has_cuda() and not is_dry_run:
        raise ValueError("no CUDA device is visible: the GPU kit measures a GPU (on a CPU, run it with --dry-run)")
    device = runtime.torch_device()
    size, copy_elements, repeats = (8192, 2**28, 10) if device.type == "cuda" else (512, 2**22, 3)
    name = runtime.device_name(device) or f"CPU ({os.cpu_count()} cores)"
    rows = [
        ["python", platform.python_version()],
        ["torch", f"{torch.__version__} (CUDA {torch.version.cuda})"],
        *[[package, _version(package)] for package in _VERSIONS],
        ["device", f"{name}, {runtime.cuda_device_count()} GPU(s) visible (memory: nvidia-smi in log.txt)"],
    ]
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16, generator=generator)
    gemm_s = _median_seconds(device, lambda: torch.mm(a, b), repeats)
    source = torch.rand(copy_elements, device=device, generator=generator)
    target = torch.empty_like(source)
    copy_s = _median_seconds(device, lambda: target.copy_(source), repeats)
    gemm_rate = 2 * size**3 / gemm_s
    peak = peak_flops(name) if device.type == "cuda" else None
    of_peak = f" ({100 * gemm_rate / peak:.0f}% of the {peak / 1e12:.0f} TFLOP/s datasheet peak)" if peak else ""
    rows += [
        [f"bf16 GEMM {size}^3", f"{gemm_rate / 1e12:.1f} TFLOP/s, median of {repeats}{of_peak}"],
        [
            f"copy of {4 * copy_elements / 2**30:.2f} GiB",
            f"{8 * copy_elements / copy_s / 1e12:.2f} TB/s read + written",
        ],
        ["MFU reference", f"{peak / 1e12:.0f} TFLOP/s dense bf16 (bench.py train)" if peak else "no peak known"],
    ]
    timer = "CUDA events" if device.type == "cuda" else "the host clock (no GPU: a dry run)"
    text = f"### What the stages ran on ({timer}, random data)\n\n{markdown_table(['what', 'value'], rows)}\n"
    files.write_text(out, text)
    print(text)
    return 0


def _median_seconds(device, work, repeats: int) -> float:
    """The median seconds of ``work`` after a warm-up: CUDA events on a GPU, the host clock on the CPU."""
    import time

    from dist_syndr import runtime

    def seconds() -> float:
        if device.type == "cuda":
            return runtime.cuda_event_seconds(device, work)
        started = time.perf_counter()
        work()
        return time.perf_counter() - started

    for _ in range(3):  # warm-up: handles, kernels, clocks
        seconds()
    return statistics.median(seconds() for _ in range(repeats))


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
