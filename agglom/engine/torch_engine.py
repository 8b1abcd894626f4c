"""The `torch` strategy: one process, or DDP under torchrun (gloo on CPU, nccl on GPU)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from agglom.engine.base import Engine, pick_device, share_cpu_threads


def state_to_safetensors(module: nn.Module, path: Path) -> None:
    from agglom.train.files import save_tensors

    save_tensors(module.state_dict(), path)


def load_safetensors_into(module: nn.Module, path: Path) -> None:
    from teachers.safe_load import load_safetensors

    module.load_state_dict(load_safetensors(path), strict=True)


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        self.device = pick_device(self.info, str(cfg.engine.get("device", "auto")))
        self._owns_process_group = False
        if self.info.distributed and not torch.distributed.is_initialized():
            backend = cfg.engine.backend
            if backend == "auto":
                backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            else:
                share_cpu_threads(self.info.world_size)
            torch.distributed.init_process_group(backend=backend)
            self._owns_process_group = True
        self.model: Optional[nn.Module] = None
        self.wrapped: Optional[nn.Module] = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.schedule: Callable[[int], float] = lambda s: 1.0

    def setup(self, model: nn.Module, param_groups: list, schedule: Callable[[int], float]) -> nn.Module:
        from agglom.train.optim import adamw

        self.model = model.to(self.device)
        self.optimizer = adamw(param_groups, self.cfg.optim, self.device)
        self.schedule = schedule
        self.wrapped = model
        if self.info.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.wrapped = DDP(model, device_ids=ids, broadcast_buffers=True)
        return self.wrapped

    def backward(self, loss: torch.Tensor) -> None:
        """Called once per micro-batch with the unscaled loss; accumulation scaling happens here."""
        (loss / max(1, int(self.cfg.optim.accum_steps))).backward()

    def zero_grad(self) -> None:
        assert self.optimizer is not None
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, step_index: int = 0) -> float:
        assert self.optimizer is not None and self.model is not None
        clip = self.cfg.optim.grad_clip
        params = [p for p in self.model.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        factor = self.schedule(step_index)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * factor
        if torch.isfinite(norm):
            self.optimizer.step()
        self.zero_grad()
        return float(norm)

    def current_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    def save(self, directory: Path) -> None:
        if not self.is_main:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        from agglom.train.files import torch_save

        state_to_safetensors(self.unwrap(), directory / "model.safetensors")
        torch_save(self.optimizer.state_dict(), directory / "optim.pt")

    def load(self, directory: Path) -> None:
        directory = Path(directory)
        from teachers.safe_load import safe_torch_load

        load_safetensors_into(self.unwrap(), directory / "model.safetensors")
        self.optimizer.load_state_dict(safe_torch_load(directory / "optim.pt"))

    def unwrap(self) -> nn.Module:
        assert self.model is not None
        return self.model

    @classmethod
    def consolidate(cls, directory: Path) -> Dict[str, torch.Tensor]:
        """The model's state as saved: ``model.safetensors`` (already fp32, one file)."""
        from teachers.safe_load import load_safetensors

        return dict(load_safetensors(Path(directory) / "model.safetensors"))

    def close(self) -> None:
        """Destroy the process group only when this engine created it (another strategy may reuse its own)."""
        if self._owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

