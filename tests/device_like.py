"""A Python environment built the way the lent H200's is, for the GPU kit's dry run: the running interpreter's
own torch and the packages that machine's image holds, and none of the others (no DeepSpeed, DALI, WebDataset,
MLflow, FAISS). The packages are linked from this interpreter's site-packages, so torch is not installed twice.

The package list is the machine's image as the device tool's KINDS.md records it (2026-11-17), cut to what
this project or its dependencies import.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

DEVICE_PACKAGES = (
    "torch", "torchvision", "triton", "numpy", "scipy", "timm", "safetensors", "huggingface-hub", "scikit-image",
    "scikit-learn", "matplotlib", "pillow", "pytest", "pytest-timeout", "hypothesis", "pyyaml", "tqdm", "psutil",
    "xxhash", "msgpack", "ninja", "py-cpuinfo", "einops", "packaging", "six", "onnx", "onnxruntime", "onnxscript",
    "onnx-ir", "pandas", "filelock", "fsspec", "jinja2", "markupsafe", "networkx", "sympy", "mpmath",
    "typing-extensions", "setuptools", "imageio", "tifffile", "lazy-loader", "joblib", "threadpoolctl",
    "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing", "python-dateutil", "iniconfig", "pluggy",
    "pygments", "attrs", "sortedcontainers", "protobuf", "ml-dtypes", "tzdata", "pytz", "requests", "idna",
    "urllib3", "certifi", "charset-normalizer", "nvidia-ml-py", "cuda-bindings", "cuda-pathfinder",
    "cuda-toolkit", "nvidia-cublas", "nvidia-cuda-cupti", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime",
    "nvidia-cudnn-cu13", "nvidia-cufft", "nvidia-cufile", "nvidia-curand", "nvidia-cusolver",
    "nvidia-cusparse", "nvidia-cusparselt-cu13", "nvidia-nccl-cu13", "nvidia-nvjitlink", "nvidia-nvshmem-cu13",
    "nvidia-nvtx", "hf-xet", "regex", "wheel", "pip",
)  # fmt: skip


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-")


def build(folder: Path) -> Path:
    """A venv in ``folder`` seeing only :data:`DEVICE_PACKAGES` of this interpreter; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    view = folder / "device-site"
    view.mkdir()
    wanted = {_normalised(name) for name in DEVICE_PACKAGES}
    for dist in importlib.metadata.distributions():
        if _normalised(dist.metadata["Name"]) not in wanted or dist.files is None:
            continue
        base = Path(dist.locate_file(""))
        for top in {Path(str(entry)).parts[0] for entry in dist.files}:
            source, target = base / top, view / top
            if top != ".." and source.exists() and not target.exists():
                target.symlink_to(source)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "device-site.pth").write_text(f"{view}\n")
    return python
