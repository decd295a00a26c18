"""The DALI graph: what the source workers feed, how each member format becomes pixels, crops, normalisation.

::

    fn.external_source (parallel Python workers, one sample per call: PlannedSource)
        reads the member by (offset, size) with os.pread, checks its header and pixel cap,
        computes the crop anchors (crops.py) -> image inputs, anchors, score, position, status
    image inputs -> pixels, by the set's member format (member_inputs):
        "encoded"  PNG/JPEG bytes: fn.decoders.image_slice (one crop) or fn.decoders.image + fn.slice,
                   "mixed" with a GPU (nvJPEG for JPEG; PNG is decoded on the CPU), "cpu" without
        "bands"    LZ4 pixel members on a GPU: the member bytes with their band offsets and sizes ->
                   fn.decoders.inflate (nvCOMP, GPU only) -> fn.reshape to (padded H, W, 3) -> fn.slice
        "pixels"   LZ4 pixel members without a GPU: DALI has no CPU inflate, so the source worker
                   inflates them (lz4.block: the same bytes) and feeds (H, W, 3) pixels -> fn.slice
    fn.crop_mirror_normalize -> float32 CHW, ImageNet mean/std

The source callable is stateless as DALI requires: it finds its epoch's feed
(rows, statuses, seed, epoch) in a small ``.npz`` file written by the main
process (:class:`~dist_syndr.loader.dali_pipeline.DaliLoader`), keyed by DALI's
epoch index. Padding and skipped samples get a placeholder of the same kind.

Shapes: ``n`` crops per image, ``C`` crop side; pixels ``(H, W, 3)`` uint8; anchors ``(2,)`` int32 ``[x, y]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from dist_syndr import runtime
from dist_syndr.config import DataConfig
from dist_syndr.features.preprocess import IMAGENET_MEAN_255, IMAGENET_STD_255
from dist_syndr.imaging import lz4_pixels
from dist_syndr.loader.batch import STATUS_OK, STATUS_SKIPPED
from dist_syndr.loader.crops import CropSpec
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, placeholder_png

ImageInputs = Literal["encoded", "bands", "pixels"]
_NUM_INPUTS = {"encoded": 1, "bands": 5, "pixels": 1}


def member_inputs(table: SampleTable, device: str) -> ImageInputs:
    """How the graph receives the images of ``table``'s set on ``device`` (cpu | gpu); ValueError for a set that
    mixes LZ4 pixel members with encoded images (the graph has one decode path; the sharding step never mixes)."""
    extensions = set(table.extensions)
    if lz4_pixels.EXTENSION not in extensions:
        return "encoded"
    if extensions != {lz4_pixels.EXTENSION}:
        raise ValueError(
            f"{table.root}: mixes .{lz4_pixels.EXTENSION} members with {', '.join(sorted(extensions - {'lz4'}))};"
            " DALI reads one kind per set: reshard it with one shard.image_format, or set data.loader=torch"
        )
    return "bands" if device == "gpu" else "pixels"


class PlannedSource:
    """The ``fn.external_source`` callable: sample ``i`` of DALI epoch ``e`` from ``feed_dir/epoch-e.npz``."""

    def __init__(self, reader: MemberReader, spec: CropSpec, feed_dir: Path, on_error: str, inputs: ImageInputs):
        self.reader = reader
        self.spec = spec
        self.feed_dir = Path(feed_dir)
        self.on_error = on_error
        self.inputs = inputs
        self.placeholder = _placeholder(inputs, spec.size)
        self._feed: tuple[int, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_feed"} | {"_feed": None}

    def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
        feed = self._feed_for(sample_info.epoch_idx)
        index = sample_info.idx_in_epoch
        if index >= len(feed["rows"]):
            raise StopIteration
        row, status = int(feed["rows"][index]), int(feed["status"][index])
        anchors = np.zeros((self.spec.num_crops, 2), dtype=np.int32)
        image = self.placeholder
        if status == STATUS_OK:
            try:
                member = self.reader.read_checked(row, self.spec.size)  # pixel cap and size, before decoding
                image = self._image_inputs(row, member)
            except SampleError:
                if self.on_error != "skip":
                    raise
                status = STATUS_SKIPPED
            else:
                where = (self.reader.table.keys[row], member.digest, member.width, member.height)
                anchors = self.spec.anchors(*where, seed=int(feed["seed"]), epoch=int(feed["epoch"]))
        score = self.reader.table.scores[row] if row >= 0 else np.nan
        return (
            *image,
            *anchors,
            np.array(score, dtype=np.float32),
            np.array(feed["positions"][index], dtype=np.int64),
            np.array(status, dtype=np.uint8),
        )

    def _image_inputs(self, row: int, member) -> tuple[np.ndarray, ...]:
        if self.inputs == "pixels":  # the CPU form of the GPU's inflate: same blocks, same bytes
            return (self.reader.decode(row, member),)
        data = np.frombuffer(member.data, dtype=np.uint8)
        if self.inputs == "encoded":
            return (data,)
        try:
            return _band_inputs(data)
        except ValueError as error:
            raise SampleError(f"{self.reader.table.describe(row)}: image bytes are corrupt ({error})") from None

    def _feed_for(self, epoch_index: int) -> dict[str, np.ndarray]:
        if self._feed is None or self._feed[0] != epoch_index:
            path = self.feed_dir / f"epoch-{epoch_index:06d}.npz"
            if not path.is_file():
                raise RuntimeError(f"{path}: the loader wrote no feed for DALI epoch {epoch_index}")
            with np.load(path) as archive:
                self._feed = (epoch_index, {name: archive[name] for name in archive.files})
        return self._feed[1]


def _band_inputs(data: np.ndarray) -> tuple[np.ndarray, ...]:
    """The member bytes, band offsets and sizes, one band's shape and all bands' shape, as the GPU inflate wants."""
    layout = lz4_pixels.read_layout(data)
    return (
        data,
        layout.band_offsets().astype(np.int32),
        np.asarray(layout.band_sizes, dtype=np.int32),
        np.array([layout.band_rows, layout.width, 3], dtype=np.int32),
        np.array([layout.padded_height, layout.width, 3], dtype=np.int32),
    )


def _placeholder(inputs: ImageInputs, crop: int) -> tuple[np.ndarray, ...]:
    """A black ``crop x crop`` image in the graph's input kind, fed for padding and skipped samples."""
    if inputs == "encoded":
        return (np.frombuffer(placeholder_png(crop), dtype=np.uint8),)
    black = np.zeros((crop, crop, 3), dtype=np.uint8)
    if inputs == "pixels":
        return (black,)
    return _band_inputs(np.frombuffer(lz4_pixels.encode(black), dtype=np.uint8))


def build_pipeline(
    source: PlannedSource,
    spec: CropSpec,
    config: DataConfig,
    *,
    device: str,
    device_id: int | None,
    is_one_by_one: bool = False,
):
    """The DALI pipeline over ``source``: ``n`` normalised crops, score, position and status per sample.

    ``is_one_by_one``: batches of one, no workers, no pipelining, so an error belongs to the sample just run.
    """
    from nvidia.dali import fn, pipeline_def, types

    num_crops, num_inputs = spec.num_crops, _NUM_INPUTS[source.inputs]
    # Forked workers must start before the CUDA driver is initialised, which a GPU machine cannot promise.
    start_method = runtime.worker_start_method()

    # Parallel workers prepare `prefetch` batches ahead; the one-by-one form runs the source inline.
    parallel = {} if is_one_by_one else {"parallel": True, "prefetch_queue_depth": config.prefetch}
    image_types = {
        "encoded": ([types.UINT8], [1], [""]),
        "bands": ([types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32], [1] * 5, [""] * 5),
        "pixels": ([types.UINT8], [3], ["HWC"]),
    }[source.inputs]

    @pipeline_def(
        batch_size=1 if is_one_by_one else config.batch_size,
        num_threads=config.num_workers,
        device_id=device_id if device == "gpu" else None,
        py_num_workers=0 if is_one_by_one else config.num_workers,
        py_start_method=start_method,
        prefetch_queue_depth=1 if is_one_by_one else config.prefetch,
        exec_pipelined=not is_one_by_one,
        exec_async=not is_one_by_one,
    )
    def graph():
        outputs = fn.external_source(
            source,
            num_outputs=num_inputs + num_crops + 3,
            batch=False,
            **parallel,
            dtype=[*image_types[0], *[types.INT32] * num_crops, types.FLOAT, types.INT64, types.UINT8],
            ndim=[*image_types[1], *[1] * num_crops, 0, 0, 0],
            layout=[*image_types[2], *[""] * (num_crops + 3)],
        )
        inputs, anchors, tail = outputs[:num_inputs], outputs[num_inputs : num_inputs + num_crops], outputs[-3:]
        shape = np.array([spec.size, spec.size], dtype=np.int32)
        absolute = {"normalized_anchor": False, "normalized_shape": False}
        if source.inputs == "encoded":
            crops = _decoded_crops(fn, types, inputs[0], anchors, shape, absolute, device)
        else:
            if source.inputs == "bands":
                data, offsets, sizes, band_shape, padded_shape = inputs
                bands = fn.decoders.inflate(
                    data.gpu(),
                    chunk_offsets=offsets,
                    chunk_sizes=sizes,
                    shape=band_shape,
                    dtype=types.UINT8,
                    layout="HWC",
                    sequence_axis_name="B",
                )  # (bands, band rows, W, 3): one GPU inflate for every band of the batch
                pixels = fn.reshape(bands, shape=padded_shape, layout="HWC")  # zero rows below the image
            else:
                pixels = inputs[0]
            crops = [fn.slice(pixels, anchor, shape, **absolute) for anchor in anchors]  # inside the image's rows
        normalised = [
            fn.crop_mirror_normalize(
                crop, dtype=types.FLOAT, output_layout="CHW", mean=list(IMAGENET_MEAN_255), std=list(IMAGENET_STD_255)
            )
            for crop in crops
        ]
        return (*normalised, *tail)

    pipeline = graph()
    pipeline.build()
    return pipeline


def _decoded_crops(fn, types, encoded, anchors, shape, absolute, device):
    decoder = {
        "device": "mixed" if device == "gpu" else "cpu",
        "output_type": types.RGB,
        "adjust_orientation": False,  # shards hold upright pixels (older sets: read as written)
        "jpeg_fancy_upsampling": True,  # the GPU decoder then matches libjpeg-turbo (CPU, PIL)
    }
    if len(anchors) == 1:
        return [fn.decoders.image_slice(encoded, anchors[0], shape, **decoder, **absolute)]
    decoded = fn.decoders.image(encoded, **decoder)
    return [fn.slice(decoded, anchor, shape, **absolute) for anchor in anchors]
