"""The torch ``DataLoader`` fallback: the same plan, members, anchors and normalisation as DALI.

For machines without DALI (``data.loader: torch``, or ``auto`` where DALI is
absent). Worker processes read members by offset (members.py), take the
anchors from crops.py, decode through :mod:`dist_syndr.imaging` (PIL, bit for
bit what DALI's CPU decoder gives) and cut the same windows, so a given plan
yields the same keys and the same pixels as the DALI path. Errors name the
shard and the key; under ``on_error=skip`` the sample is dropped from its batch
and counted.

Shapes: ``B`` batch size, ``n`` crops per image, ``C`` crop side.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import numpy as np
import torch

from dist_syndr.config import DataConfig
from dist_syndr.features.preprocess import normalise
from dist_syndr.loader.batch import Batch
from dist_syndr.loader.crops import CropSpec, cut
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, warn_skipped
from dist_syndr.loader.plan import RankPlan
from dist_syndr.sharding.shard_set import ShardSet

log = logging.getLogger(__name__)


class PlannedCrops(torch.utils.data.Dataset):
    """Map-style dataset over one rank plan: item ``i`` is the plan's ``i``-th sample, cropped and normalised."""

    def __init__(
        self, reader: MemberReader, rows: np.ndarray, spec: CropSpec, *, seed: int, epoch: int, on_error: str
    ):
        self.reader = reader
        self.rows = rows
        self.spec = spec
        self.seed = seed
        self.epoch = epoch
        self.on_error = on_error

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, position: int) -> dict:
        row = int(self.rows[position])
        key = self.reader.table.keys[row]
        try:
            crops = self._crops(row, key)
        except SampleError as error:
            if self.on_error != "skip":
                raise
            return {"key": key, "skipped": str(error)}
        return {"key": key, "crops": crops, "score": float(self.reader.table.scores[row])}

    def _crops(self, row: int, key: str) -> torch.Tensor:
        member = self.reader.read_checked(row, self.spec.size)  # the pixel cap and the size, before decoding
        anchors = self.spec.anchors(key, member.digest, member.width, member.height, seed=self.seed, epoch=self.epoch)
        pixels = self.reader.decode(row, member)
        return torch.from_numpy(np.stack([normalise(cut(pixels, anchor, self.spec.size)) for anchor in anchors]))


def collate(items: list[dict]) -> dict:
    """Stack the delivered samples; list the skipped ones beside them."""
    delivered = [item for item in items if "crops" in item]
    size = delivered[0]["crops"].shape[-1] if delivered else 0
    return {
        "images": torch.cat([item["crops"] for item in delivered]) if delivered else torch.empty(0, 3, size, size),
        "scores": torch.tensor([item["score"] for item in delivered], dtype=torch.float32),
        "keys": [item["key"] for item in delivered],
        "skipped": [(item["key"], item["skipped"]) for item in items if "skipped" in item],
    }


class TorchLoader:
    """Batches of planned samples through a torch ``DataLoader`` with ``data.num_workers`` processes."""

    def __init__(self, shard_set: ShardSet, config: DataConfig, *, is_training: bool, pin_memory: bool = False):
        self.config = config
        self.spec = CropSpec.from_config(config, is_training=is_training)
        self.table = SampleTable.from_shard_set(shard_set, is_verified=config.verify_checksums != "off")
        self.reader = MemberReader(self.table, config.max_pixels)
        self.pin_memory = pin_memory
        self.num_skipped = 0

    def batches(self, plan: RankPlan) -> Iterator[Batch]:
        """Every batch of ``plan`` in order (samples skipped under ``on_error=skip`` left out)."""
        if plan.batch_size != self.config.batch_size:
            raise ValueError(
                f"plan batch size {plan.batch_size} differs from data.batch_size={self.config.batch_size}"
            )
        if not plan.keys:
            return
        dataset = PlannedCrops(
            self.reader,
            self.table.rows(plan.keys),
            self.spec,
            seed=plan.seed,
            epoch=plan.epoch,
            on_error=self.config.on_error,
        )
        # The plan fixes the order and the batches: no sampler shuffles here.
        batch_positions = [
            list(range(start, min(start + plan.batch_size, len(plan))))
            for start in range(0, len(plan), plan.batch_size)
        ]
        workers = self.config.num_workers
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=batch_positions,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.pin_memory,
            prefetch_factor=self.config.prefetch if workers > 0 else None,
        )
        num_skipped_before = self.num_skipped
        for collated in _clean_errors(loader):
            for _, reason in collated["skipped"]:
                log.warning("skipping %s (data.on_error=skip)", reason)
            self.num_skipped += len(collated["skipped"])
            yield Batch(
                images=collated["images"],
                scores=collated["scores"],
                keys=collated["keys"],
                num_crops=self.spec.num_crops,
                skipped_keys=tuple(key for key, _ in collated["skipped"]),
            )
        warn_skipped(plan.epoch, self.num_skipped - num_skipped_before)

    def close(self) -> None:
        """Close the shard files this process opened."""
        self.reader.close()

    def __enter__(self) -> TorchLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _clean_errors(loader: torch.utils.data.DataLoader) -> Iterator[dict]:
    # A worker's SampleError comes back wrapped in its traceback; the caller gets our message alone.
    try:
        yield from loader
    except SampleError as error:
        match = re.search(r"SampleError: (.+)", str(error))
        raise ValueError(match.group(1).strip() if match else str(error)) from None
