"""Load weights without running code: safetensors first, pickles only through `torch.load(weights_only=True)`."""
from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch

PathLike = Union[str, Path]

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".tar")
# containers that training scripts commonly wrap a state dict in, unwrapped in this order
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")


class UnsafeCheckpointError(RuntimeError):
    """The file needs arbitrary code to unpickle; it was refused and nothing in it ran."""


class CheckpointFormatError(RuntimeError):
    """The file could be read safely but holds no usable state dict."""


def _read_raw(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    with open(path, "rb") as f:
        head = f.read(16)
    # a safetensors file starts with an 8-byte little-endian header length followed by '{'
    if len(head) > 8 and head[8:9] == b"{" and path.suffix not in PICKLE_SUFFIXES:
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol chatter; a refusal is reported below
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it needs arbitrary code to unpickle, and only tensors and plain containers "
            f"are allowed. Nothing in it was run. If you trust its source, convert it to safetensors elsewhere "
            f"(safetensors.torch.save_file(state_dict, 'model.safetensors')) and point the card at that file. "
            f"{_what_it_wanted(str(e))}"
        ) from None
    except RuntimeError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UnsafeCheckpointError(f"refused to load {path}: it is not a plain weights file. Nothing in it was "
                                        f"run. {_what_it_wanted(msg)}") from None
        raise CheckpointFormatError(f"could not read {path}: {msg.splitlines()[0]}") from e


def _what_it_wanted(msg: str) -> str:
    """The global the pickle asked for, without torch's advice to retry unsafely (and without ANSI codes)."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    m = re.search(r"(Unsupported global: GLOBAL [^\s]+|GLOBAL [^\s]+)", msg)
    return f"(It asks for {m.group(1).replace('Unsupported global: ', '')}.)" if m else ""


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> Dict[str, torch.Tensor]:
    """Unwrap {"state_dict": ...} / {"model": ...} containers and a DDP `module.` prefix; keep tensors only."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or any(torch.is_tensor(v) for v in obj.values()):
            break  # a state dict (tensors at the top level), or not a mapping at all
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{source} holds a {type(obj).__name__}, not a state dict")
    sd = {str(k): v for k, v in obj.items() if torch.is_tensor(v)}
    if not sd:
        raise CheckpointFormatError(f"{source} holds no tensors (keys: {list(obj)[:8]})")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def load_state_dict(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a weights file (safetensors, or a pickle of tensors) into a flat state dict on CPU."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return unwrap_state_dict(_read_raw(path), source=str(path))


def file_identity(path: PathLike, nbytes: int = 1 << 20) -> str:
    """sha256 of the size and the first MiB: stable across copies (no mtime), cheap for multi-GB files."""
    path = Path(path)
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(nbytes))
    return h.hexdigest()


__all__ = ["UnsafeCheckpointError", "CheckpointFormatError", "load_state_dict", "unwrap_state_dict", "file_identity"]
