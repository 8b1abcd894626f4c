"""Reading the engines' checkpoint files without running anything in them.

A run folder may come from someone else, and its ``config.yaml`` chooses the engine that reads its checkpoint.
Every pickle an engine opens therefore goes through ``torch.load(weights_only=True)``: tensors, plain containers
and, for DeepSpeed's own files, exactly the DeepSpeed types in :func:`deepspeed_safe_globals`. A file that asks
for anything else (``os.system``, ``builtins.eval``, ...) is refused with :class:`UnsafeCheckpointError` naming
it, before anything in it runs.

DeepSpeed reads its checkpoints with ``torch.load(..., weights_only=False)`` from several modules (its checkpoint
engine on resume, ``deepspeed.utils.zero_to_fp32`` when merging ZeRO partitions, the universal-checkpoint
readers), always through the ``torch.load`` attribute. :func:`deepspeed_loads_made_safe` replaces that attribute
for the duration of one DeepSpeed call, so every one of those reads, present or added by a later DeepSpeed, is
forced to ``weights_only=True`` with the allow-list, while DeepSpeed's own merging logic is kept unchanged.

A refusal is :class:`teachers.safe_load.UnsafeCheckpointError` (a file that is safe to read but not a checkpoint:
``CheckpointFormatError``), as for every other weights file: the CLI prints it as one line naming the file and
exits with 2 (agglom/cli.py), and a resume reports it as a checkpoint it cannot resume from
(agglom/train/checkpoint.py).
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, List

import torch

from teachers.safe_load import CheckpointFormatError, UnsafeCheckpointError


def deepspeed_safe_globals() -> List[type]:
    """The non-tensor types DeepSpeed itself pickles into its checkpoints, by import (never by name matching).

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on the files DeepSpeed writes for ZeRO
    0-3 in fp32 and bf16: the ZeRO optimiser states hold ``ZeroStageEnum`` (an int enum), ``LossScaler`` (the
    static scale; ``DynamicLossScaler`` when a ``engine.ds_config`` file turns on fp16) and ``fragment_address``
    (a dataclass of two ints); the model states hold none. Unpickling them only creates the instance and sets
    its attributes (none defines ``__setstate__``; an enum is looked up by value), and those attributes are
    themselves limited to what ``weights_only`` allows; no method of theirs runs.
    """
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def _name(f: Any) -> str:
    return os.fspath(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", f))


def _asked_for(msg: str) -> str:
    """The global the pickle asked for, from torch's refusal (without torch's advice to load it unsafely)."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    m = re.search(r"GLOBAL (\S+)", msg)
    if m:
        return f" (it asks for {m.group(1)})"
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", msg, re.S)
    reason = " ".join(m.group(1).split())[:200] if m else ""
    return f" (torch's safe unpickler stopped at: {reason})" if reason else ""


def _refused(path: str, msg: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(
        f"refused to load {path}: it needs arbitrary code to unpickle{_asked_for(msg)}, and only tensors, plain "
        "containers and DeepSpeed's own checkpoint types are allowed. Nothing in it was run; use an intact copy "
        "of the run")


def _weights_only_load(load: Callable[..., Any], f: Any, map_location: Any = None, pickle_module: Any = None,
                       **kwargs: Any) -> Any:
    """``load`` (the real ``torch.load``) forced to ``weights_only=True`` with :func:`deepspeed_safe_globals`;
    ``pickle_module`` is ignored (the safe unpickler is torch's own). A path that is not a regular file (a fifo
    or a device in a received folder would be read forever) is refused before it is opened."""
    kwargs.pop("weights_only", None)
    path = _name(f)
    if isinstance(f, (str, os.PathLike)) and Path(f).exists() and not Path(f).is_file():
        raise CheckpointFormatError(f"{path} is not a regular file (a device, a fifo or a folder); nothing was read. "
                                     "Use an intact copy of the run")
    try:
        with torch.serialization.safe_globals(deepspeed_safe_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol chatter; a refusal is reported below
            return load(f, map_location, weights_only=True, **kwargs)
    except pickle.UnpicklingError as e:
        raise _refused(path, str(e)) from None
    except RuntimeError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise _refused(path, msg) from None
        raise CheckpointFormatError(f"could not read {path}: {msg.splitlines()[0] if msg else type(e).__name__}; "
                                     "nothing in it was run. Use an intact copy of the run") from None
    except (EOFError, ValueError) as e:
        raise CheckpointFormatError(f"could not read {path}: {type(e).__name__}: {e}; nothing in it was run. "
                                     "Use an intact copy of the run") from None


def load_deepspeed_file(path: Path) -> Any:
    """One file DeepSpeed wrote (e.g. ``mp_rank_00_model_states.pt``), on CPU, read without running code."""
    return _weights_only_load(torch.load, str(path), "cpu")


@contextlib.contextmanager
def deepspeed_loads_made_safe() -> Iterator[None]:
    """Within the block every ``torch.load`` call (DeepSpeed's ``load_checkpoint`` and ``zero_to_fp32`` among
    them) is a :func:`load_deepspeed_file`-style safe load, whatever ``weights_only`` it asks for."""
    real = torch.load

    def load(f: Any, map_location: Any = None, pickle_module: Any = None, **kwargs: Any) -> Any:
        return _weights_only_load(real, f, map_location, pickle_module, **kwargs)

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


__all__ = ["deepspeed_safe_globals", "load_deepspeed_file", "deepspeed_loads_made_safe"]
