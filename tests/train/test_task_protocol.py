"""The loop's task contract (agglom/train/task_protocol.py): both tasks implement it, the loop asks a task for
nothing the contract does not state (and never by ``hasattr``), and a task that writes only the required methods
trains through the loop."""
from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn

from agglom.distill.task import AgglomTask
from agglom.finetune.task import FinetuneTask
from agglom.train import loop as loop_mod
from agglom.train.task_protocol import LoopTask

REQUIRED = {"param_groups", "attach", "write_run_files", "flops_per_sample", "forward"}
HOOKS = {"stateful", "prepare", "tracked", "worker_reads", "step_batch"}


@pytest.mark.parametrize("cls", [AgglomTask, FinetuneTask])
def test_both_tasks_implement_the_loop_task(cls):
    assert issubclass(cls, LoopTask)
    assert not inspect.isabstract(cls)


def test_the_required_methods_are_abstract_and_the_hooks_have_defaults():
    assert set(LoopTask.__abstractmethods__) == REQUIRED

    class Half(LoopTask):
        def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
            return {}

    with pytest.raises(TypeError, match="abstract"):  # refused when built, not mid-run
        Half()


def _asked_of_the_task(tree: ast.AST) -> set:
    """The attribute names loop.py reads on ``self.task`` or on a local ``task``."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            owner = node.value
            if (isinstance(owner, ast.Name) and owner.id == "task") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "task"
                    and isinstance(owner.value, ast.Name) and owner.value.id == "self"):
                out.add(node.attr)
    return out


def test_the_loop_asks_only_what_the_contract_states():
    source = Path(loop_mod.__file__).read_text()
    tree = ast.parse(source)
    hasattr_args = [ast.unparse(n.args[0]) for n in ast.walk(tree)
                    if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "hasattr"]
    assert not [a for a in hasattr_args if "task" in a]
    asked = _asked_of_the_task(tree)
    stated = (REQUIRED - {"forward"}) | HOOKS | {"model", "phases", "train"}  # train(): nn.Module's
    assert asked <= stated, asked - stated
    assert {"worker_reads", "step_batch"} <= asked  # called unconditionally


class Minimal(LoopTask):
    """Only what the contract requires: a linear model on pooled pixels, the mean squared output as the loss."""

    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(in_chans * 4, 1))
        object.__setattr__(self, "forward_model", self.model)
        self.device = torch.device("cpu")

    def param_groups(self) -> List[Dict[str, Any]]:
        return [{"params": list(self.model.parameters()), "weight_decay": 0.0}]

    def attach(self, forward_model: nn.Module, device: torch.device, autocast: Any) -> None:
        object.__setattr__(self, "forward_model", forward_model)
        self.device = device

    def write_run_files(self, run_dir: Path) -> None:
        (Path(run_dir) / "minimal.json").write_text("{}")

    def flops_per_sample(self, batch: Dict[str, Any]) -> float:
        return 1.0

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        out = self.forward_model(batch["image"].to(self.device))
        return {"loss": out.float().pow(2).mean()}


def test_a_task_with_only_the_required_methods_trains_through_the_loop(tmp_path, synth_root, data_cfg):
    from agglom.engine import build_engine
    from agglom.train.setup import in_chans_of

    cfg = data_cfg(synth_root, epoch_samples=32, **{"optim.steps": 2, "optim.warmup_steps": 1,
                                                    "log.interval": 1, "log.checkpoint_interval": 2,
                                                    "log.progress": "off", "out_dir": str(tmp_path), "name": "m"})
    engine = build_engine(cfg)
    run_dir = tmp_path / "m"
    run_dir.mkdir()
    state = loop_mod.Loop(cfg, engine, run_dir, Minimal(in_chans_of(cfg)), loop_mod.start_run(cfg, run_dir)).run()
    engine.close()
    assert state["step"] == 2
    assert (run_dir / "minimal.json").is_file()
    assert (run_dir / "checkpoints" / "latest").read_text() == "00000002"
    assert json.loads((run_dir / "run.json").read_text())["step"] == 2
