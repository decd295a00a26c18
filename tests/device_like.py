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
    "nvidia-nvtx", "hf-xet", "regex", "wheel", "pip", "click", "anyio", "h11",
    # huggingface-hub 2 (this stack's) reaches the network through these; the machine's hub 1.x uses httpx
    "httpx2", "httpcore2", "truststore",
)  # fmt: skip


def _linked_part(parts: tuple[str, ...], shared: set[str]) -> Path:
    return Path(*parts[:2]) if parts[0] in shared and len(parts) > 1 else Path(parts[0])


def _normalised(name: str) -> str:
    return name.lower().replace("_", "-")


def _shared_folders() -> set[str]:
    """Top-level folders that several distributions install into (``nvidia/``: the CUDA libraries, and DALI)."""
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions():
        for entry in dist.files or ():
            parts = Path(str(entry)).parts
            if len(parts) > 1 and ".dist-info" not in parts[0]:
                owners.setdefault(parts[0], set()).add(_normalised(dist.metadata["Name"]))
    return {top for top, names in owners.items() if len(names) > 1}


def build(folder: Path) -> Path:
    """A venv in ``folder`` seeing only :data:`DEVICE_PACKAGES` of this interpreter; returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    view = folder / "device-site"
    view.mkdir()
    wanted = {_normalised(name) for name in DEVICE_PACKAGES}
    shared = _shared_folders()  # linked one level down: only the wanted distributions' parts of them
    for dist in importlib.metadata.distributions():
        if _normalised(dist.metadata["Name"]) not in wanted or dist.files is None:
            continue
        base = Path(dist.locate_file(""))
        for part in {_linked_part(Path(str(entry)).parts, shared) for entry in dist.files}:
            source, target = base / part, view / part
            if part.parts[0] != ".." and source.exists() and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(source)
    python = folder / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "device-site.pth").write_text(f"{view}\n")
    return python
