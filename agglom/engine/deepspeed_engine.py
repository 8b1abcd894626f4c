"""The `deepspeed` strategy: ZeRO 0-3, bf16, optional CPU offload, DeepSpeed's own checkpoints.

One process (the env is filled in) or many under the `deepspeed` launcher / torchrun; on a machine without CUDA
it runs on DeepSpeed's CPU accelerator with gloo. `import deepspeed` happens only here, lazily.

Calling pattern (the loop's): `backward(loss)` once per micro-batch with the unscaled loss, then `step(i)` once
per optimiser step after `optim.accum_steps` micro-batches. DeepSpeed divides the loss by its
`gradient_accumulation_steps` itself; the strategy tells DeepSpeed explicitly which micro-batch closes the
window (`set_gradient_accumulation_boundary`, so the gradient reduction happens there) and calls DeepSpeed's
`step()` once, at the boundary.

Checkpoints: `save(dir)` -> `dir/ds/` (+ `dir/latest`, `dir/zero_to_fp32.py`) through
`engine.save_checkpoint(dir, tag="ds", client_state=...)` on every rank; `load(dir)` reads it back (module
incl. buffers, optimiser, ZeRO partitions). `consolidate_fp32(dir)` turns any of these into one fp32 state dict.
Both read DeepSpeed's files without running code in them (:mod:`agglom.engine.safe_checkpoint`).
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from agglom.dist import dist_info
from agglom.engine.base import Engine, pick_device
from agglom.engine.ds_config import accelerator_type, build_ds_config
from agglom.engine.safe_checkpoint import deepspeed_loads_made_safe, load_deepspeed_file
from teachers.safe_load import CheckpointFormatError

TAG = "ds"
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _import_deepspeed():
    if accelerator_type() == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before the import: DeepSpeed probes once
    import deepspeed

    return deepspeed


class DeepSpeedEngine(Engine):
    name = "deepspeed"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)
        on_cpu = accelerator_type() == "cpu"
        self._env_filled: List[str] = []
        if "RANK" not in os.environ and "WORLD_SIZE" not in os.environ:  # one process, no launcher
            defaults = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}
            for key in _DIST_ENV:
                if key not in os.environ:
                    os.environ[key] = defaults[key]
                    self._env_filled.append(key)
        os.environ.setdefault("LOCAL_RANK", "0")
        self.info = dist_info()
        self.deepspeed = _import_deepspeed()
        self.device = torch.device("cpu") if on_cpu else pick_device(self.info)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        elif self.info.world_size > 1:
            from agglom.engine.base import share_cpu_threads

            share_cpu_threads(self.info.world_size)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            backend = cfg.engine.backend
            if backend == "auto":
                backend = "gloo" if on_cpu else "nccl"
            self.deepspeed.init_distributed(dist_backend=backend)
        self.engine: Any = None
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.schedule: Callable[[int], float] = lambda s: 1.0
        self.base_lrs: List[float] = []
        self.ds_config: Dict[str, Any] = {}
        self.client_state: Dict[str, Any] = {}
        self._micro = 0  # micro-batches backpropagated in the current accumulation window

    # ---------------------------------------------------------------------------------------------- setup
    @property
    def accum_steps(self) -> int:
        return int(self.ds_config.get("gradient_accumulation_steps", max(1, int(self.cfg.optim.accum_steps))))

    def setup(self, model: nn.Module, param_groups: list, schedule: Callable[[int], float]) -> nn.Module:
        from agglom.train.optim import adamw

        model = model.to(self.device)
        # torch's AdamW (not FusedAdam/DeepSpeedCPUAdam): nothing to JIT-compile, identical maths to `torch`
        self.optimizer = adamw(param_groups, self.cfg.optim, self.device)
        self.base_lrs = [float(g["base_lr"]) for g in param_groups]
        self.schedule = schedule
        self.ds_config = build_ds_config(self.cfg, self.device.type)
        self.engine, _, _, _ = self.deepspeed.initialize(model=model, optimizer=self.optimizer,
                                                         config=self.ds_config)
        self._micro = 0
        return self.engine

    # ------------------------------------------------------------------------------------------- stepping
    def backward(self, loss: torch.Tensor) -> None:
        """Once per micro-batch, unscaled loss; DeepSpeed divides by gradient_accumulation_steps itself."""
        assert self.engine is not None, "setup() first"
        self._micro += 1
        self.engine.set_gradient_accumulation_boundary(self._micro >= self.accum_steps)
        self.engine.backward(loss)

    def step(self, step_index: int = 0) -> float:
        """At the accumulation boundary: lr for `step_index`, clip + optimiser step (DeepSpeed), grad norm."""
        assert self.engine is not None, "setup() first"
        if self._micro != self.accum_steps:
            raise RuntimeError(f"DeepSpeedEngine.step() after {self._micro} backward() calls; it expects exactly "
                               f"gradient_accumulation_steps={self.accum_steps} per step")
        factor = self.schedule(step_index)
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = base * factor
        own_norm = None
        if not self.engine.zero_optimization() and not self.engine.bfloat16_enabled():
            # plain fp32 stage 0: DeepSpeed clips but does not report the norm; grads are reduced already
            own_norm = self._grad_norm()
        self.engine.step()
        self._micro = 0
        self._sync_buffers()
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = own_norm
        if norm is None:
            return float("nan")
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def _sync_buffers(self) -> None:
        """Rank 0's buffers to every rank after each step, as DDP's broadcast_buffers does: the normalisers'
        running statistics are updated from each rank's own batches, and DeepSpeed saves only rank 0's."""
        if self.info.world_size <= 1 or not torch.distributed.is_initialized():
            return
        with torch.no_grad():
            for b in self.engine.module.buffers():
                if b.dtype == torch.bool:
                    t = b.to(torch.uint8)
                    torch.distributed.broadcast(t, src=0)
                    b.copy_(t.bool())
                else:
                    torch.distributed.broadcast(b, src=0)

    def _grad_norm(self) -> Optional[float]:
        grads = [p.grad.detach() for p in self.engine.module.parameters() if p.grad is not None]
        if not grads:
            return None
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))

    def zero_grad(self) -> None:
        """Drop the gradients (the loop calls this after a non-finite loss) and restart the window.

        Under ZeRO 1-3 DeepSpeed may already hold the reduced gradient partitions of earlier micro-batches of an
        interrupted window; those are applied with the next window (only matters with accum_steps > 1).
        """
        if self.engine is None:
            return
        self._micro = 0
        opt = self.engine.optimizer
        if self.engine.zero_optimization() and hasattr(opt, "zero_grad"):
            opt.zero_grad()
        self.engine.zero_grad()

    def current_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    # ---------------------------------------------------------------------------------------- checkpoints
    def save(self, directory: Path) -> None:
        """Every rank: DeepSpeed writes its shards to `directory/ds/` (module + buffers, optimiser, ZeRO)."""
        assert self.engine is not None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {"agglom_engine": self.name, "zero_stage": int(self.ds_config["zero_optimization"]["stage"]),
                 "world_size": self.info.world_size, "base_lrs": list(self.base_lrs),
                 "lr": self.current_lr(), "global_steps": int(self.engine.global_steps)}
        self.engine.save_checkpoint(str(directory), tag=TAG, client_state={"agglom": state})

    def load(self, directory: Path) -> None:
        assert self.engine is not None
        directory = Path(directory)
        if not (directory / TAG).is_dir():
            raise FileNotFoundError(f"no DeepSpeed checkpoint (folder {TAG}/) in {directory}; was it written by "
                                    f"engine.name=deepspeed?")
        # a resumed run may have been sent by someone else: every file DeepSpeed reads here is a weights-only load
        with deepspeed_loads_made_safe():
            load_path, client_state = self.engine.load_checkpoint(str(directory), tag=TAG, load_module_strict=True,
                                                                  load_optimizer_states=True,
                                                                  load_lr_scheduler_states=False)
        if load_path is None:
            raise FileNotFoundError(f"DeepSpeed could not load the checkpoint in {directory / TAG}")
        saved = dict((client_state or {}).get("agglom", {}))
        self.client_state = saved
        if saved.get("base_lrs") and len(saved["base_lrs"]) == len(self.base_lrs):
            self.base_lrs = [float(v) for v in saved["base_lrs"]]
        self._micro = 0

    @classmethod
    def consolidate(cls, directory: Path) -> Dict[str, torch.Tensor]:
        """ZeRO partitions (or stage 0's module state) merged to one fp32 state dict."""
        return consolidate_fp32(directory)

    @classmethod
    def consolidate_fp32(cls, directory: Path) -> Dict[str, torch.Tensor]:
        return consolidate_fp32(directory)

    # --------------------------------------------------------------------------------------------- misc
    def unwrap(self) -> nn.Module:
        assert self.engine is not None
        return self.engine.module

    def close(self) -> None:
        """Multi-process: destroy the process group. One process: keep its 1-rank group alive, because
        DeepSpeed caches its groups process-wide and a second engine in this process (tests, a resumed run)
        could not use a re-created one; only the env variables this engine filled in are removed."""
        if self.info.world_size > 1:
            super().close()
        for key in self._env_filled:
            os.environ.pop(key, None)
        self._env_filled = []


def consolidate_fp32(directory: Path, tag: str = TAG) -> Dict[str, torch.Tensor]:
    """One fp32 state dict (parameters + buffers) from a checkpoint written by `DeepSpeedEngine.save`.

    ZeRO 1-3: DeepSpeed's `zero_to_fp32` merges the fp32 master partitions of all ranks. Stage 0: the module
    state (which then holds the weights) cast to fp32. Non-floating buffers keep their dtype. No process
    group is needed; run it on one process. Every file is read without running code in it
    (:mod:`agglom.engine.safe_checkpoint`): a run folder someone sent chooses this engine in its config.yaml.
    """
    directory = Path(directory)
    ckpt = directory / tag
    if not ckpt.is_dir():
        raise FileNotFoundError(f"no DeepSpeed checkpoint {ckpt}")
    _import_deepspeed()
    if any(ckpt.glob("*zero_pp_rank_*optim_states.pt")):
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        try:
            with deepspeed_loads_made_safe():
                state = get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=tag)
        except (KeyError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointFormatError(f"{ckpt}: DeepSpeed could not merge its ZeRO partitions ({type(e).__name__}: "
                                        f"{str(e)[:300]}); nothing in them was run. Use an intact copy of the run"
                                        ) from None
        where = ckpt
    else:
        files = sorted(ckpt.glob("mp_rank_*_model_states.pt"))
        if not files:
            raise FileNotFoundError(f"no model states in {ckpt}")
        saved = load_deepspeed_file(files[0])
        state, where = (saved.get("module") if isinstance(saved, dict) else None), files[0]
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointFormatError(f"{where} holds no module state dict of tensors; nothing in it was run. Use an "
                                    "intact copy of the run")
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
