"""Score images nobody labelled with a trained model: from Python, or streamed from files by ``launchers/score.py``.

::

    from dist_syndr import Scorer

    scorer = Scorer.load("runs/vit-b", device="auto")     # run folder, checkpoint folder or weights file
    scores = scorer.score(["photos/a.jpg", pil_image, uint8_array])   # (N,) on the training scale [0, 10]

Scoring needs no DeepSpeed and no process group. Inputs are decoded to upright
RGB as the sharding step decodes a dataset (:mod:`dist_syndr.imaging`, through
:mod:`dist_syndr.scoring.inputs`), cut by the run's crop protocol
(:mod:`dist_syndr.scoring.crops`, random crops drawn from the pixels' digest) and sent through the model in batches of
``batch_size`` crops; bf16 on a GPU unless told otherwise. For many files,
:meth:`Scorer.score_files` decodes in DataLoader workers and yields results as
they finish, errors included, so one bad file never stops a job.

Shapes: ``N`` images; crops ``(B, 3, C, C)`` float32; scores ``(N,)`` float64.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from dist_syndr import runtime
from dist_syndr.config import Config
from dist_syndr.features.embed import evaluating, forward_rows, input_dtype
from dist_syndr.features.precision import Precision, resolve
from dist_syndr.features.preprocess import normalise_batch
from dist_syndr.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_file
from dist_syndr.pools.scores import LabelScale
from dist_syndr.runs import card as card_file
from dist_syndr.runs.checkpoints import config_path_of, load_model
from dist_syndr.scoring.compiled import CompiledForward
from dist_syndr.scoring.crops import CropProtocol
from dist_syndr.scoring.dali_decode import DaliDecoder, decoded_files, resolve_decoder
from dist_syndr.scoring.inputs import as_rgb_array


@dataclasses.dataclass(frozen=True)
class ScoredImage:
    """The result for one input: a score, or the reason there is none."""

    index: int  # position in the inputs
    name: str
    score: float = float("nan")  # mean over the crops, on the training scale [0, 10]
    spread: float = float("nan")  # standard deviation over the crops (0 with one crop)
    num_crops: int = 0
    is_resized: bool = False  # smaller than the crop: resized up before cropping
    error: str | None = None
    score_original: float | None = None  # the score on the training labels' own scale, where the run knows it


class Scorer:
    """A trained model with its crop protocol, ready to score images."""

    def __init__(
        self,
        model: torch.nn.Module,
        protocol: CropProtocol,
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        batch_size: int = 64,
        config: Config | None = None,
        label_scale: LabelScale | None = None,
    ):
        self.device = torch.device(device)
        self.precision: Precision = resolve(precision, self.device.type)
        self.model = model.to(self.device).eval()
        self.protocol = protocol
        self.batch_size = int(batch_size)
        self.config = config
        self.label_scale = label_scale  # maps scores back to the training labels' own scale (None: unknown)
        self.compiled: CompiledForward | None = None  # set by :meth:`compile`

    def compile(self, *, strict: bool = True) -> Scorer:
        """Run uint8 windows through the model compiled by ``torch.compile`` from now on (compiled at the first
        batch; :mod:`dist_syndr.scoring.compiled`); ``strict=False``: if compiling fails, warn and go on without.
        Returns this scorer."""
        eager = None if strict else self._eager_forward
        self.compiled = CompiledForward(self.model, self.device, self.precision, self.batch_size, eager=eager)
        return self

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        device: str = "auto",
        *,
        config_path: str | Path | None = None,
        crops: int | None = None,
        crop_mode: str | None = None,
        batch_size: int = 64,
        precision: str = "auto",
        is_trusted: bool = False,
    ) -> Scorer:
        """The scorer of a run folder, a DeepSpeed checkpoint (folder or tag) or a weights file, with the run's
        evaluation crops unless ``crops``/``crop_mode`` say otherwise; ``device="auto"``: the GPU when present.
        Nothing in the checkpoint is unpickled beyond tensors and DeepSpeed's own types unless ``is_trusted``
        (:mod:`dist_syndr.runs.model_states`)."""
        config_path = config_path_of(Path(checkpoint), config_path)
        cfg, model = load_model(Path(checkpoint), config_path, is_trusted=is_trusted)
        label_scale = card_file.label_scale_of(cfg, config_path.parent)
        data = cfg.data
        protocol = CropProtocol.of_run(
            data.crop, data.eval_crops, data.eval_crop_mode, cfg.seed, crops=crops, mode=crop_mode
        )
        resolved = runtime.torch_device() if device == "auto" else torch.device(device)
        options = {"precision": precision, "batch_size": batch_size, "config": cfg, "label_scale": label_scale}
        return cls(model, protocol, device=resolved, **options)

    def score(self, items: Sequence) -> np.ndarray:
        """``(N,)`` float64 scores of paths, PIL images, uint8 arrays or tensors; ValueError naming the first
        item that cannot be scored."""
        results = self.score_items(items)
        failed = next((r for r in results if r.error is not None), None)
        if failed is not None:
            raise ValueError(f"item {failed.index} ({failed.name}): {failed.error}")
        return np.array([r.score for r in results], dtype=np.float64)

    def score_items(self, items: Sequence) -> list[ScoredImage]:
        """One :class:`ScoredImage` per item in the items' order, failures included (decoded here, in this
        process)."""
        prepared = (_prepare(index, _name(item, index), lambda item=item: as_rgb_array(item), self.protocol)
                    for index, item in enumerate(items))  # fmt: skip
        return sorted(self._run(prepared), key=lambda result: result.index)

    def score_files(
        self,
        paths: Sequence[Path],
        *,
        num_workers: int = 2,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        decoder: str = "pil",
    ) -> Iterator[ScoredImage]:
        """Results for ``paths`` as batches finish (not necessarily in order); unreadable files come back with
        their reason. ``decoder``: ``pil`` in ``num_workers`` DataLoader workers, ``dali`` (``mixed`` on this
        scorer's GPU, ``cpu`` otherwise; :mod:`dist_syndr.scoring.dali_decode`) or ``auto``."""
        if resolve_decoder(decoder, self.device.type) == "dali":
            dali = DaliDecoder(
                "gpu" if self.device.type == "cuda" else "cpu",
                num_threads=max(1, num_workers),
                device_id=self.device.index or 0,
            )
            files = decoded_files(list(paths), dali, min_side=self.protocol.size, max_pixels=max_pixels)
            return self._run(_prepare(index, str(path), decode, self.protocol) for index, path, decode in files)
        dataset = _FileWindows(list(paths), self.protocol, max_pixels)
        if num_workers == 0:
            return self._run(dataset[i] for i in range(len(dataset)))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            prefetch_factor=4,
            collate_fn=_as_is,
            multiprocessing_context=runtime.worker_start_method(),
        )
        return self._run(iter(loader))

    def forward(self, crops: np.ndarray) -> np.ndarray:
        """``(B,)`` float32 model outputs of ``(B, 3, C, C)`` normalised float32 crops, or of ``(B, C, C, 3)`` uint8
        windows (normalised here), in batches of ``batch_size``; uint8 windows go through the compiled model
        after :meth:`compile`."""
        if self.compiled is not None and crops.dtype == np.uint8:
            starts = range(0, len(crops), self.batch_size)
            parts = [self.compiled(crops[start : start + self.batch_size]) for start in starts]
            return np.concatenate(parts) if parts else np.zeros(0, np.float32)
        return self._eager_forward(crops)

    def _eager_forward(self, crops: np.ndarray) -> np.ndarray:
        outputs = []
        with evaluating(self.model):
            dtype = input_dtype(self.model)
            for start in range(0, len(crops), self.batch_size):
                part = crops[start : start + self.batch_size]
                batch = torch.from_numpy(
                    normalise_batch(part) if part.dtype == np.uint8 else np.ascontiguousarray(part)
                )
                rows = forward_rows(self.model, batch, device=self.device, dtype=dtype, precision=self.precision)
                outputs.append(rows.cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros(0, np.float32)

    def _run(self, prepared) -> Iterator[ScoredImage]:
        """Stream the images' crops through the model in full batches of ``batch_size`` (one image's crops may
        span two batches); yield each image's result as soon as all its crops are scored."""
        waiting: collections.deque[_Prepared] = collections.deque()  # images not yet fully scored, in order
        queued, outputs = _CropQueue(), np.zeros(0, np.float64)  # crops to forward; outputs of waiting images
        for item in prepared:
            if item.error is not None:
                yield item.result
                continue
            waiting.append(item)
            queued.add(item.crops)
            while len(queued) >= self.batch_size:
                outputs = np.concatenate([outputs, self.forward(queued.take(self.batch_size))])
                outputs = yield from self._finished(waiting, outputs)
        if len(queued):
            outputs = np.concatenate([outputs, self.forward(queued.take(len(queued)))])
            yield from self._finished(waiting, outputs)

    def _finished(self, waiting: collections.deque, outputs: np.ndarray):
        """Yield the result of every waiting image whose crops all have outputs; return the outputs left."""
        while waiting and len(outputs) >= len(waiting[0].crops):
            item = waiting.popleft()
            values, outputs = outputs[: len(item.crops)], outputs[len(item.crops) :]
            score = float(values.mean())
            original = None if self.label_scale is None else float(self.label_scale.to_original(score))
            yield dataclasses.replace(
                item.result, score=score, spread=float(values.std()), num_crops=len(values), score_original=original
            )
        return outputs


class _CropQueue:
    """Crops waiting for the model, taken in batches in the order they came."""

    def __init__(self):
        self.parts: list[np.ndarray] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, crops: np.ndarray) -> None:
        self.parts.append(crops)
        self.count += len(crops)

    def take(self, count: int) -> np.ndarray:
        """The first ``count`` crops, removed from the queue."""
        joined = np.concatenate(self.parts) if len(self.parts) > 1 else self.parts[0]
        self.parts = [joined[count:]] if count < len(joined) else []
        self.count = len(joined) - count
        return joined[:count]


@dataclasses.dataclass(frozen=True)
class _Prepared:
    result: ScoredImage
    crops: np.ndarray | None = None

    @property
    def error(self) -> str | None:
        return self.result.error


def _prepare(index: int, name: str, decode, protocol: CropProtocol) -> _Prepared:
    """Decode and cut one item: uint8 windows (a quarter of the bytes float32 crops take between processes)."""
    try:
        crops, resized = protocol.windows(decode())
    except (ImageError, ValueError) as error:
        return _Prepared(ScoredImage(index, name, error=str(error)))
    return _Prepared(ScoredImage(index, name, is_resized=resized), crops)


class _FileWindows(torch.utils.data.Dataset):
    """Decoded, cropped and normalised files for DataLoader workers; an unreadable file gives its error."""

    def __init__(self, paths: list[Path], protocol: CropProtocol, max_pixels: int):
        self.paths, self.protocol, self.max_pixels = paths, protocol, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> _Prepared:
        path = self.paths[index]
        return _prepare(index, str(path), lambda: decode_file(path, max_pixels=self.max_pixels), self.protocol)


def _as_is(item: _Prepared) -> _Prepared:
    return item


def _name(item, index: int) -> str:
    return str(item) if isinstance(item, str | Path) else f"item {index}"
