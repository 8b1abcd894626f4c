"""Atomic checkpoints: written to a temporary folder, renamed into place, then `latest` is repointed.

A crash or kill at any moment leaves the previous checkpoint and `latest` usable; stale temporary folders are
removed on the next start. A write that fails (a full disk) removes its temporary folder at once and raises a
:class:`~agglom.errors.ReadableError` naming the file, the cause (ENOSPC) and the checkpoint still in place.
Tensors go to safetensors; optimiser and RNG state go through torch.save and are read back through the safe
loader (`weights_only=True`): a tampered file is refused with a message, and nothing in it runs.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

from agglom.errors import ReadableError
from agglom.train.files import describe_write_error, save_tensors, torch_save, write_bytes

LATEST = "latest"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write_bytes(tmp, text.encode())
    os.replace(tmp, path)


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [str(np_state[0]), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state((name, state["numpy_keys"].numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate((3, tuple(int(v) for v in state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_module(module: nn.Module, path: Path) -> None:
    save_tensors({k: v.clone() for k, v in module.state_dict().items()}, path)


def load_module(module: nn.Module, path: Path) -> None:
    from teachers.safe_load import load_safetensors

    module.load_state_dict(load_safetensors(path), strict=True)


def assert_finite(module: nn.Module) -> None:
    """Never checkpoint NaN/inf weights."""
    for name, p in module.state_dict().items():
        if p.is_floating_point() and not torch.isfinite(p).all():
            raise FloatingPointError(f"refusing to checkpoint: non-finite values in {name}")


class CheckpointManager:
    """`<run>/checkpoints/<step:08d>/` folders, a `latest` pointer and retention of the newest `keep`."""

    def __init__(self, run_dir: Path, keep: int, is_main: bool) -> None:
        self.root = Path(run_dir) / "checkpoints"
        self.keep, self.is_main = max(1, keep), is_main
        if is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            for stale in self.root.glob(".tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)

    def latest(self) -> Optional[Path]:
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        path = self.root / pointer.read_text().strip()
        return path if (path / "state.json").is_file() else None

    def save(self, step: int, engine: Any, state: Dict[str, Any], modules: Dict[str, nn.Module]) -> Path:
        """Every rank calls this; rank 0 finalises. `modules` are extra stateful modules (objective, ema)."""
        name = f"{step:08d}"
        tmp = self.root / f".tmp-{name}"
        final = self.root / name
        assert_finite(engine.unwrap())
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        engine.barrier()
        failed: Optional[BaseException] = None
        try:
            engine.save(tmp)
            torch_save(rng_state(), tmp / f"rng-{engine.info.rank}.pt")
            if self.is_main:
                for key, module in modules.items():
                    save_module(module, tmp / f"{key}.safetensors")
                _atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
        except (OSError, RuntimeError) as e:  # a full disk, a vanished folder: every rank learns it below
            failed = e
        if engine.all_reduce_min(0.0 if failed else 1.0) < 1:
            self._failed(step, tmp, failed)
        engine.barrier()
        if self.is_main:
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            _atomic_write_text(self.root / LATEST, name)
            self._prune()
        engine.barrier()
        return final

    def _failed(self, step: int, tmp: Path, error: Optional[BaseException]) -> None:
        """Remove the partial folder now and say what happened, what is intact and how to go on."""
        if self.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        why = describe_write_error(error, tmp) if error is not None else "another rank failed to write its part"
        prev = self.latest()
        kept = (f"The previous checkpoint {prev} is intact and checkpoints/latest still points to it"
                if prev is not None else "No earlier checkpoint exists")
        raise ReadableError(f"checkpoint at step {step} could not be written: {why}. The partial folder was removed. "
                            f"{kept}; free space (or fix the cause) and run the same command to resume.")

    def load(self, path: Path, engine: Any, modules: Dict[str, nn.Module]) -> Dict[str, Any]:
        """Restore a checkpoint; a damaged or tampered file is refused (:class:`ReadableError`), nothing runs."""
        from teachers.safe_load import CheckpointFormatError, UnsafeCheckpointError, safe_torch_load

        path = Path(path)
        if not (path / "state.json").is_file():
            raise FileNotFoundError(f"not a checkpoint folder (no state.json): {path}")
        try:
            engine.load(path)
            for key, module in modules.items():
                if (path / f"{key}.safetensors").is_file():
                    load_module(module, path / f"{key}.safetensors")
            rng_file = path / f"rng-{engine.info.rank}.pt"
            if rng_file.is_file():
                set_rng_state(safe_torch_load(rng_file))
            return json.loads((path / "state.json").read_text())
        except (UnsafeCheckpointError, CheckpointFormatError, ValueError, KeyError, RuntimeError) as e:
            raise ReadableError(f"cannot resume from {path}: {e}. The checkpoint was modified or damaged; resume "
                                f"from an earlier one (resume={path.parent}/<step>) or start over with another "
                                "name=") from None

    def _prune(self) -> None:
        done = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
