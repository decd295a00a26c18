"""Reading DeepSpeed's checkpoint files without running anyone's code.

A DeepSpeed tag holds pickles: ``*model_states.pt`` (the module, the run's
client state) and ``*optim_states.pt`` (the ZeRO partitions). A full unpickle
runs whatever a file asks for, so a run folder someone sent could execute code
the moment it is read. Consumers therefore load with ``weights_only=True`` and an
allow-list of the few types DeepSpeed and this trainer write (numpy arrays in the
train state; DeepSpeed's loss scaler, ZeRO stage enum and fragment addresses);
anything else is refused with one line naming the file and the global it wanted.
``is_trusted`` (``--trust-checkpoint``) unpickles fully, for checkpoints written
by other tools with types outside the list. DeepSpeed's own ``zero_to_fp32`` is
run inside :func:`restricted_loads`, which makes every ``torch.load`` it calls a
weights-only load under the same allow-list (torch's
``TORCH_FORCE_WEIGHTS_ONLY_LOAD`` switch). Training's own resume keeps
DeepSpeed's loader: it reads what this job wrote.

Shapes: none.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

TRUST_HINT = "pass --trust-checkpoint (Python: is_trusted=True) only if you trust whoever wrote it"
_FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


class UntrustedCheckpointError(ValueError):
    """A checkpoint file asks for code or types outside the allow-list; the message names the file and the type."""


@functools.cache
def allowed_globals() -> tuple:
    """The types a weights-only load of a DeepSpeed checkpoint may build (imported once, on first use)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    numpy_core = getattr(np, "_core", None) or np.core
    dtypes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    numpy_types = [numpy_core.multiarray._reconstruct, np.ndarray, np.dtype, *dtypes]
    return (*numpy_types, LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address)


def load(path: Path, *, is_trusted: bool = False, mmap: bool = True) -> object:
    """The object a DeepSpeed checkpoint file holds, on the CPU (memory-mapped where possible).

    Untrusted (the default): weights-only with :func:`allowed_globals`;
    :class:`UntrustedCheckpointError` naming ``path`` when it wants more. A file that
    is not a readable torch checkpoint (truncated, half-written) is one ValueError line.
    """
    import torch

    path = Path(path)
    try:
        if is_trusted:
            return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
        with torch.serialization.safe_globals(list(allowed_globals())):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as error:
        raise refusal(path, error) from None
    except (RuntimeError, OSError, EOFError) as error:
        raise ValueError(f"{path}: not a readable checkpoint file ({_first_line(error)})") from None


@contextlib.contextmanager
def restricted_loads(is_trusted: bool = False) -> Iterator[None]:
    """Every ``torch.load`` inside the block (DeepSpeed's ``zero_to_fp32`` included) loads weights only, with
    :func:`allowed_globals`; a no-op when ``is_trusted``. Not for threads that load other files meanwhile."""
    if is_trusted:
        yield
        return
    import torch

    previous = os.environ.get(_FORCE_WEIGHTS_ONLY)
    os.environ[_FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(list(allowed_globals())):
            yield
    finally:
        if previous is None:
            os.environ.pop(_FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[_FORCE_WEIGHTS_ONLY] = previous


def refusal(path: Path, error: BaseException) -> UntrustedCheckpointError:
    """The one-line error for a file a weights-only load refused (``error``: torch's UnpicklingError)."""
    return UntrustedCheckpointError(
        f"{path}: refused to unpickle: it asks for {_wanted_global(str(error))}, which a checkpoint of this "
        f"trainer never holds and which could run code; {TRUST_HINT}"
    )


def _wanted_global(message: str) -> str:
    found = re.search(r"(?:GLOBAL|global) ([\w.]+)", message) or re.search(r"got <class '([\w.]+)'>", message)
    return found.group(1) if found else "a type outside the allow-list"


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] + (" ..." if len(text) > 200 else "")
