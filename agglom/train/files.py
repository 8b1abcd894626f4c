"""Writing run files so that a failure names the file and the cause: ``torch.save`` and safetensors' writer
report a full disk as ``basic_ios::clear: iostream error`` or a bare I/O error; here the bytes are made in memory
and written with Python's own I/O, whose ``OSError`` carries the errno (``ENOSPC``) and the path."""
from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path
from typing import Any, Dict

import torch


def write_bytes(path: Path, data: bytes) -> None:
    """Write and fsync ``data``; an ``OSError`` names ``path``."""
    path = Path(path)
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e


def save_tensors(tensors: Dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))


def torch_save(obj: Any, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def describe_write_error(e: BaseException, where: Path) -> str:
    """``<path>: No space left on device (ENOSPC; 1.2 MB free on that filesystem)`` and the like."""
    code = getattr(e, "errno", None)
    name = errno.errorcode.get(code, "") if code else ""
    target = getattr(e, "filename", None) or where
    try:
        free = shutil.disk_usage(Path(where).parent if not Path(where).exists() else where).free
        space = f"; {free / 2**20:.1f} MiB free on that filesystem"
    except OSError:
        space = ""
    cause = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    return f"{target}: {cause} ({name or type(e).__name__}{space})"


__all__ = ["write_bytes", "save_tensors", "torch_save", "describe_write_error"]
