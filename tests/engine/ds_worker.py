"""A worker for tests/engine/test_deepspeed.py, run under the real launcher:

    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 tests/engine/ds_worker.py OUT_DIR [ZERO_STAGE]

Each rank trains a tiny model (with a running-statistics buffer) through DeepSpeedEngine on its own data
(ZeRO, accum_steps=2), saves, trains on; then a second engine loads the checkpoint into a fresh model and
repeats the last steps. Each rank writes OUT_DIR/rank<r>.json: its final parameters and buffers of both runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import nn

from agglom.config.schema import Recipe
from agglom.engine.deepspeed_engine import DeepSpeedEngine


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 12)
        self.b = nn.Linear(12, 1)
        self.register_buffer("mu", torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.mu.lerp_(x.mean(0), 0.1)
        return self.b(torch.tanh(self.a(x - self.mu)))


def batches(rank: int, n: int):
    g = torch.Generator().manual_seed(100 + rank)
    w = torch.linspace(-1, 1, 6)
    for _ in range(n):
        x = torch.randn(4, 6, generator=g)
        yield x, (x * w).sum(1, keepdim=True)


def run(engine: DeepSpeedEngine, model: nn.Module, data, first_step: int, steps: int, accum: int) -> list:
    losses = []
    for s in range(first_step, first_step + steps):
        for _ in range(accum):
            x, y = next(data)
            loss = ((model(x) - y) ** 2).mean()
            engine.backward(loss)
            losses.append(float(loss))
        engine.step(s)
    return losses


def snapshot(module: nn.Module) -> dict:
    return {k: v.detach().float().flatten().tolist() for k, v in module.state_dict().items()}


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]
    out = Path(args[0])
    stage = int(args[1]) if len(args) > 1 else 2
    cfg = OmegaConf.structured(Recipe)
    cfg.engine.name, cfg.engine.zero_stage = "deepspeed", stage
    cfg.optim.accum_steps, cfg.data.batch_size, cfg.optim.lr = 2, 4, 0.01

    torch.manual_seed(0)
    model = Tiny()
    engine = DeepSpeedEngine(cfg)
    rank = engine.info.rank
    wrapped = engine.setup(model, [{"params": list(model.parameters())}], lambda s: 1.0 / (1 + s))
    micro = list(batches(rank, 10))
    losses = run(engine, wrapped, iter(micro[:6]), 0, 3, 2)
    engine.save(out / "ckpt")
    rest = micro[6:]  # the micro-batches the continuation sees
    run(engine, wrapped, iter(rest), 3, 2, 2)
    uninterrupted = snapshot(engine.unwrap())

    torch.manual_seed(123)  # a different init: everything must come from the checkpoint
    model2 = Tiny()
    engine2 = DeepSpeedEngine(cfg)
    wrapped2 = engine2.setup(model2, [{"params": list(model2.parameters())}], lambda s: 1.0 / (1 + s))
    engine2.load(out / "ckpt")
    loaded = snapshot(engine2.unwrap())
    run(engine2, wrapped2, iter(rest), 3, 2, 2)
    resumed = snapshot(engine2.unwrap())
    (out / f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world_size": engine.info.world_size, "losses": losses, "uninterrupted": uninterrupted,
        "resumed": resumed, "loaded": loaded, "client_state": engine2.client_state}))
    engine2.barrier()
    engine2.close()


if __name__ == "__main__":
    main()
