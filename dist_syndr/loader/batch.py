"""What both loaders yield: normalised crops, scores and the keys they belong to.

Shapes: ``B`` images in the batch (after skipped samples are removed), ``n``
crops per image (1 for training), ``C`` crop side. ``images`` is
``(B * n, 3, C, C)`` float32 with the ``n`` crops of image ``i`` in rows
``i * n .. i * n + n - 1``; ``scores`` ``(B,)`` float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the package stays light: plans need no torch
    import torch

# Status of each fed sample, carried beside it through the DALI pipeline and the torch workers.
STATUS_OK = 0
STATUS_PADDING = 1  # fills the rank's last batch up to batch_size; never yielded
STATUS_SKIPPED = 2  # unreadable under on_error=skip; never yielded, counted


@dataclass
class Batch:
    """One batch of one rank."""

    images: torch.Tensor  # (B * n, 3, C, C) float32, on the GPU when DALI decodes there
    scores: torch.Tensor  # (B,) float32 on the CPU (NaN where the index has no score)
    keys: list[str]  # (B,) sample keys, in row order
    num_crops: int = 1
    skipped_keys: tuple[str, ...] = ()  # samples of this batch left out under on_error=skip

    def __len__(self) -> int:
        return len(self.keys)

    def mean_over_crops(self, predictions: torch.Tensor) -> torch.Tensor:
        """``(B * n, ...)`` per-crop predictions -> ``(B, ...)`` per-image means."""
        return predictions.reshape(len(self.keys), self.num_crops, *predictions.shape[1:]).mean(dim=1)
