"""The strategy interface: setup, backward, step, save, load, unwrap (+ the process topology)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Type

import torch
from torch import nn

from agglom.dist import DistInfo, dist_info
from agglom.registry import Registry

# name -> "module:Class", imported only when chosen (DeepSpeed is imported lazily)
ENGINES: Registry[str] = Registry("engine", key="engine.name", builtins={
    "torch": "agglom.engine.torch_engine:TorchEngine",
    "deepspeed": "agglom.engine.deepspeed_engine:DeepSpeedEngine",
})


def register_engine(name: str, target: str) -> None:
    """Make the :class:`Engine` subclass at ``target`` (``"module:Class"``) available as ``engine.name: <name>``."""
    ENGINES.add(name, target)


class Engine:
    """How the trainable module is placed, wrapped, stepped and checkpointed.

    - `setup(model, param_groups, schedule)` -> the module to call in forward (wrapped for DDP/DeepSpeed);
    - `backward(loss)`; `step() -> grad norm` (clip, optimiser step, lr schedule, zero grad);
    - `save(dir)` / `load(dir)` write/read model + optimiser state (every rank calls both);
    - `unwrap()` -> the plain module (for export, eval and EMA).
    """

    name = "base"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.info: DistInfo = dist_info()
        self.device = torch.device("cpu")

    # topology -----------------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.info.is_main

    def barrier(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()

    def all_reduce_min(self, value: float) -> float:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([value], dtype=torch.float64, device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
            return float(t.item())
        return value

    def gather_objects(self, obj: Any) -> list:
        """``obj`` of every rank (picklable, small: e.g. skip counts), in rank order; ``[obj]`` without DDP."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            out: list = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(out, obj)
            return out
        return [obj]

    def autocast(self):
        """bf16 autocast on GPU (unless fp32 asked), nothing on CPU where bf16 is slower (docs/guide/train.md)."""
        prec = self.cfg.engine.precision
        use_bf16 = prec == "bf16" or (prec == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    # the interface --------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, param_groups: list, schedule: Callable[[int], float]) -> nn.Module:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, step_index: int = 0) -> float:
        """One optimiser step at lr = base_lr * schedule(step_index); returns the gradient norm."""
        raise NotImplementedError

    def zero_grad(self) -> None:
        raise NotImplementedError

    def save(self, directory: Path) -> None:
        raise NotImplementedError

    def load(self, directory: Path) -> None:
        raise NotImplementedError

    def unwrap(self) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def consolidate(cls, directory: Path) -> Dict[str, torch.Tensor]:
        """The model's fp32 state dict from a checkpoint folder this strategy's ``save`` wrote; needs no process
        group, so a command that reads a run calls it on the class the run's ``engine.name`` names."""
        raise NotImplementedError

    def current_lr(self) -> float:
        raise NotImplementedError

    def close(self) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def engine_class(name: str) -> Type[Engine]:
    """The strategy registered as ``name`` (imported only now: DeepSpeed is imported lazily)."""
    module, attr = ENGINES.lookup(name).split(":")
    return getattr(importlib.import_module(module), attr)


def build_engine(cfg: Any) -> Engine:
    return engine_class(cfg.engine.name)(cfg)


def share_cpu_threads(world_size: int) -> None:
    """Share the machine's cores between local ranks instead of oversubscribing them (unless OMP_NUM_THREADS
    says otherwise)."""
    import os

    if world_size > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))


def pick_device(info: DistInfo, want: Optional[str] = None) -> torch.device:
    """``want`` (engine.device: cpu, cuda, cuda:1) unless it is empty or auto; else cuda:<local rank> or cpu."""
    if want and want != "auto":
        try:
            return torch.device(want)
        except RuntimeError as e:
            from agglom.config.load import ConfigError

            raise ConfigError(f"engine.device: {want!r} is not a device (auto | cpu | cuda[:i]): {e}") from None
    if torch.cuda.is_available():
        return torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return torch.device("cpu")
