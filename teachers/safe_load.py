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


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON starting with '{'."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def _looks_like(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:2] == b"PK":
        return "a zip archive (what torch.save writes)"
    if head[:1] == b"\x80":
        return "a pickle"
    return f"{path.stat().st_size} bytes of another format"


def _require_file(path: Path) -> None:
    """A missing weights path is FileNotFoundError; a device, fifo or folder in its place (``/dev/zero`` would be
    read forever) is a :class:`CheckpointFormatError` naming it."""
    if not path.exists():
        raise FileNotFoundError(f"weights file not found: {path}")
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is not a regular file (a device, a fifo or a folder); nothing was read. "
                                    "Give the weights file itself")


def load_safetensors(path: PathLike) -> Dict[str, torch.Tensor]:
    """A safetensors file's tensors on CPU; :class:`CheckpointFormatError` naming the file when it is not one
    (e.g. a pickle renamed ``model.safetensors``) or is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _require_file(path)
    if not _is_safetensors(path):
        raise CheckpointFormatError(f"{path} is not a safetensors file: it is {_looks_like(path)}. Nothing in it was "
                                    "run. Replace it with the file that belongs there")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointFormatError(f"{path} is a damaged safetensors file ({e}); replace it") from None


def safe_torch_load(path: PathLike, advice: str = "") -> Any:
    """``torch.load(weights_only=True)``: tensors and plain containers only. A pickle that would run code raises
    :class:`UnsafeCheckpointError` (nothing in it ran; ``advice`` is appended), an unreadable file
    :class:`CheckpointFormatError`; neither message suggests ``weights_only=False``."""
    path = Path(path)
    _require_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol chatter; a refusal is reported below
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"refused to load {path}: it needs arbitrary code to unpickle, and only tensors and plain containers "
            f"are allowed. Nothing in it was run. {_what_it_wanted(str(e))}{(' ' + advice) if advice else ''}"
        ) from None
    except RuntimeError as e:
        msg = str(e)
        if "weights_only" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UnsafeCheckpointError(f"refused to load {path}: it is not a plain weights file. Nothing in it was "
                                        f"run. {_what_it_wanted(msg)}{(' ' + advice) if advice else ''}") from None
        raise CheckpointFormatError(f"could not read {path}: {msg.splitlines()[0]}") from e
    except (EOFError, OSError, ValueError, IndexError, KeyError, TypeError, AttributeError, MemoryError) as e:
        # a text file, a truncated pickle or garbage: torch's restricted unpickler fails in many ways, none ran code
        raise CheckpointFormatError(f"could not read {path} as a weights file: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200] if str(e) else 'not a torch checkpoint'}") from None


_CARD_ADVICE = ("If you trust its source, convert it to safetensors elsewhere "
                "(safetensors.torch.save_file(state_dict, 'model.safetensors')) and point the card at that file.")


def _read_raw(path: Path) -> Any:
    if path.suffix == ".safetensors" or (path.suffix not in PICKLE_SUFFIXES and _is_safetensors(path)):
        return load_safetensors(path)
    return safe_torch_load(path, advice=_CARD_ADVICE)


def _what_it_wanted(msg: str) -> str:
    """What the pickle asked for, or where torch's safe unpickler stopped — without torch's advice to retry
    unsafely (``weights_only=False``) and without ANSI codes."""
    msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)
    m = re.search(r"GLOBAL ([^\s]+)", msg)
    if m:
        return f"(It asks for {m.group(1)}.)"
    m = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\s*\n|$)", msg, re.S)
    reason = " ".join(m.group(1).split()) if m else ""
    return f"(torch's safe unpickler stopped at: {reason}.)" if reason else ""


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
    _require_file(path)
    return unwrap_state_dict(_read_raw(path), source=str(path))


def file_identity(path: PathLike, nbytes: int = 1 << 20) -> str:
    """sha256 of the size and the first MiB: stable across copies (no mtime), cheap for multi-GB files."""
    path = Path(path)
    h = hashlib.sha256()
    h.update(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(nbytes))
    return h.hexdigest()


__all__ = ["UnsafeCheckpointError", "CheckpointFormatError", "load_state_dict", "unwrap_state_dict", "file_identity",
           "load_safetensors", "safe_torch_load"]
