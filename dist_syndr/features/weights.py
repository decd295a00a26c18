"""Where a backbone's weights come from: a local file, timm's own release of the named model, or a Hugging Face
Hub repository, resolved the way timm users expect.

``model.weights`` / ``shard.features.weights`` take:

- ``""``: no pretrained weights (then ``is_random_init`` must say so);
- a path: a local ``.safetensors`` / ``.pth`` / ``.pt`` state dict;
- ``timm``: timm's pretrained weights for the backbone's name, tag included
  (``resnet50.a1_in1k``; without a tag, timm's default tag);
- ``hf-hub:<org>/<repo>``: the weights file of that Hub repository, loaded into
  the architecture ``model.backbone`` names (the repo's ``config.json`` must agree).

Hub files are fetched with ``huggingface_hub.hf_hub_download`` into its cache
(``HF_HOME`` / ``HF_HUB_CACHE``), so a cache copied from a machine with internet
works on an air-gapped cluster with ``HF_HUB_OFFLINE=1``; a file missing there is
one line naming the repo and the cache folder. Every resolution records where the
weights came from (repo, revision, file) and the file's sha256, which training
writes into the run's config, model card and MLflow params; a config that sets
``weights_sha256`` pins the file. Backbone names are checked against timm's list,
with close names suggested.

Shapes: none.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from pathlib import Path

from dist_syndr import files

TIMM_SOURCE = "timm"
HUB_PREFIX = "hf-hub:"
HUB_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
LOCAL_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class ResolvedWeights:
    """A backbone's weights file and where it came from."""

    path: Path
    source: str  # file:<path> | hf-hub:<repo>@<revision>/<file>
    sha256: str
    is_hub: bool  # loaded through timm's pretrained machinery (its checkpoint filters), not as a plain state dict


def check_backbone(name: str, key: str) -> None:
    """ValueError naming ``key`` unless ``name`` is a timm model, with or without a pretrained tag; close names
    suggested."""
    import timm

    architecture, _, tag = name.partition(".")
    if timm.is_model(architecture) and (not tag or name in _pretrained_names()):
        return
    known = _pretrained_names() if tag else set(timm.list_models())
    close = difflib.get_close_matches(name, sorted(known), n=4, cutoff=0.6)
    hint = f"; close names: {', '.join(close)}" if close else "; see timm.list_models() / timm.list_pretrained()"
    what = "pretrained tag" if tag and timm.is_model(architecture) else "timm model"
    raise ValueError(f"{key}: {name!r} is not a {what}{hint}")


@functools.cache
def _pretrained_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_pretrained())


def pretrained_cfg(backbone: str) -> dict:
    """timm's pretrained config of ``backbone`` (its default tag where none is given) as a dict ({} if none)."""
    from timm.models import get_pretrained_cfg

    found = get_pretrained_cfg(backbone)
    return found.to_dict() if found is not None else {}


def resolve(backbone: str, weights: str, *, key: str) -> ResolvedWeights | None:
    """The weights file ``weights`` names for ``backbone`` (None for ``""``); ValueError naming ``key``."""
    if not weights:
        return None
    if weights == TIMM_SOURCE:
        repo = pretrained_cfg(backbone).get("hf_hub_id")
        if not repo:
            raise ValueError(f"{key}: timm has no Hub weights for {backbone!r} (name a pretrained tag, e.g. "
                             f"{backbone.partition('.')[0]}.<tag>; see timm.list_pretrained())")  # fmt: skip
        return _hub_weights(repo, backbone, key)
    if weights.startswith(HUB_PREFIX):
        return _hub_weights(weights.removeprefix(HUB_PREFIX), backbone, key)
    path = Path(weights)
    if not path.is_file():
        raise ValueError(f"{key}: {weights} does not exist (a local weights file, 'timm' or 'hf-hub:<org>/<repo>')")
    return ResolvedWeights(path=path, source=f"file:{path.resolve()}", sha256=_sha256(path), is_hub=False)


def _hub_weights(repo: str, backbone: str, key: str) -> ResolvedWeights:
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"{key}: {HUB_PREFIX}{repo}: expected {HUB_PREFIX}<org>/<repo>")
    _check_hub_architecture(repo, backbone, key)
    missing = []
    for filename in HUB_WEIGHT_FILES:
        try:
            path = Path(_download(repo, filename))
        except _MissingFile as error:
            missing.append(str(error))
            continue
        revision = path.parent.name  # .../snapshots/<commit>/<file>
        source = f"{HUB_PREFIX}{repo}@{revision}/{filename}"
        return ResolvedWeights(path=path, source=source, sha256=_sha256(path), is_hub=True)
    raise ValueError(f"{key}: no weights for {HUB_PREFIX}{repo}: {'; '.join(missing)}")


class _MissingFile(Exception):
    """A file the Hub or its cache does not have (the message says which and where)."""


def _download(repo: str, filename: str) -> str:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return hf_hub_download(repo, filename)
    except LocalEntryNotFoundError:  # before EntryNotFoundError: it is one of them
        offline = " with HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else " and the Hub cannot be reached"
        raise _MissingFile(
            f"{filename} is not in the Hugging Face cache {constants.HF_HUB_CACHE}{offline}"
            " (fill the cache on a machine with internet and copy it: README, 'Pretrained weights')"
        ) from None
    except EntryNotFoundError:
        raise _MissingFile(f"{filename} is not in the repository") from None
    except RepositoryNotFoundError:
        raise _MissingFile("the repository does not exist or is private") from None
    except OSError as error:  # network failures below huggingface_hub's own types
        raise _MissingFile(f"{filename}: {' '.join(str(error).split())[:200]}") from None


def _check_hub_architecture(repo: str, backbone: str, key: str) -> None:
    """The repo's ``config.json`` (timm writes one) must name the architecture ``backbone`` builds."""
    try:
        config = json.loads(Path(_download(repo, "config.json")).read_text())
    except (_MissingFile, ValueError):
        return  # not a timm repo layout: the state dict load itself checks the fit
    architecture = config.get("architecture", "")
    if architecture and architecture != backbone.partition(".")[0]:
        raise ValueError(
            f"{key}: {HUB_PREFIX}{repo} holds weights of {architecture!r}, but model.backbone is {backbone!r}"
        )


def _sha256(path: Path) -> str:
    stat = path.stat()
    return _cached_sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.cache
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # part of the cache key: a changed file is hashed again
    return files.sha256_file(path)


def expected_statistics(backbone: str, weights: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input ``(mean, std)`` pretrained weights were trained with: the hub repo's ``config.json`` for
    ``hf-hub:`` weights, timm's pretrained config of ``backbone`` for ``timm`` and local files; None for none."""
    if not weights:
        return None
    cfg = pretrained_cfg(backbone)
    if weights.startswith(HUB_PREFIX):
        try:
            config = json.loads(Path(_download(weights.removeprefix(HUB_PREFIX), "config.json")).read_text())
            cfg = config.get("pretrained_cfg", config)
        except (_MissingFile, ValueError):
            pass
    if "mean" not in cfg or "std" not in cfg:
        return None
    return tuple(map(float, cfg["mean"])), tuple(map(float, cfg["std"]))
