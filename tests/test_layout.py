"""The package layout: stages as subpackages, one-way imports, small modules, an architecture doc that is true."""

from __future__ import annotations

import ast
import graphlib
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "dist_syndr"
TOP_LEVEL_MODULES = {"__init__", "cli", "collectives", "demo", "files", "runtime", "source"}
BASE_PACKAGES = {"config"}  # the schema and its typed-tree loader: below every stage
STAGES = {
    "imaging",
    "pools",
    "features",
    "reshape",
    "sharding",
    "loader",
    "runs",
    "export",
    "train",
    "evaluate",
    "scoring",
    "study",
    "tracking",
    "bench",
}
MAX_MODULE_LINES = 450
MAX_LAUNCHER_LINES = 100
LONG_MODULES = {"dist_syndr.pools.distortions"}  # the distortion kernels: 25 types, one table, one file


def _modules() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of ours that ``name`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {candidate for candidate in candidates if candidate in known and candidate != name}
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    # A package's __init__ is an ordinary module of the graph; importing a submodule runs it, which adds no edge.
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _stage(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else name


def test_top_level_holds_only_the_base_modules_and_the_stages():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == TOP_LEVEL_MODULES
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert packages == STAGES | BASE_PACKAGES


def test_module_imports_have_no_cycle():
    graphlib.TopologicalSorter(_graph()).prepare()  # raises CycleError naming the cycle


def test_stage_imports_have_no_cycle():
    stages: dict[str, set[str]] = {}
    for module, imported in _graph().items():
        stage = _stage(module)
        stages.setdefault(stage, set()).update(_stage(other) for other in imported if _stage(other) != stage)
    graphlib.TopologicalSorter(stages).prepare()


def test_imaging_is_the_bottom_stage():
    """Every stage decodes images through dist_syndr/imaging/, so it may import only the top level."""
    below = {f"dist_syndr.{name}" for name in TOP_LEVEL_MODULES | BASE_PACKAGES} | {"dist_syndr"}
    outside = {
        (module, other)
        for module, imported in _graph().items()
        if _stage(module) == "imaging"
        for other in imported
        if _stage(other) != "imaging" and not any(other == base or other.startswith(f"{base}.") for base in below)
    }
    assert not outside


def _import_alone(name: str) -> tuple[str, int, str]:
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return name, result.returncode, result.stderr[-400:]


@pytest.mark.timeout(600)
def test_every_module_imports_on_its_own_in_a_fresh_interpreter():
    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [(name, err) for name, code, err in pool.map(_import_alone, sorted(_modules())) if code != 0]
    assert not failures


def test_modules_and_launchers_stay_small():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert set(long) <= LONG_MODULES, long
    launchers = {p.name: len(p.read_text().splitlines()) for p in (PROJECT_ROOT / "launchers").glob("*.py")}
    assert all(n <= MAX_LAUNCHER_LINES for n in launchers.values()), launchers


def test_architecture_doc_names_only_what_exists():
    text = (PROJECT_ROOT / "docs" / "ARCHITECTURE.md").read_text()
    paths = set(re.findall(r"\bdist_syndr(?:/[\w.]+)+", text)) | set(re.findall(r"\blaunchers/\w+\.py", text))
    missing = sorted(path for path in paths if not (PROJECT_ROOT / path).exists())
    assert not missing
    # Each stage's table names modules of that stage's folder.
    sections = re.split(r"^### `(dist_syndr/[\w/]+)/`.*$", text, flags=re.M)
    documented = {path for path in paths if path.endswith(".py")}
    for folder, body in zip(sections[1::2], sections[2::2], strict=True):
        table = body.split("\n## ", 1)[0]  # the last stage's section ends where the next chapter starts
        for name in re.findall(r"^\| `([\w/]+\.py)` \|", table, flags=re.M):
            assert (PROJECT_ROOT / folder / name).is_file(), f"{folder}/{name}"
            documented.add(f"{folder}/{name}")
    assert {section.split("/")[1] for section in sections[1::2]} == STAGES
    undocumented = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in _modules().values()
        if path.stem != "__init__" and str(path.relative_to(PROJECT_ROOT)) not in documented
    )
    assert not undocumented, "docs/ARCHITECTURE.md lists every module"


MACHINE_QUESTIONS = re.compile(r"\btorch\.(?:cuda|backends)\b|\bfrom torch import [^\n]*\b(?:cuda|backends)\b")


def test_only_runtime_asks_the_machine():
    """``torch.cuda`` and ``torch.backends`` (calls, imports, prose alike) appear only in ``dist_syndr/runtime.py``."""
    runtime_module = PACKAGE / "runtime.py"
    sources = sorted(PACKAGE.rglob("*.py")) + sorted((PROJECT_ROOT / "launchers").rglob("*.py"))
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sources
        if path != runtime_module
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if MACHINE_QUESTIONS.search(line)
    ]
    assert not found, (
        "only dist_syndr/runtime.py asks the machine; move these behind runtime functions:\n" + "\n".join(found)
    )
