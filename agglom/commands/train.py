"""`agglom train recipe=... key=value ...`."""
from __future__ import annotations

from omegaconf import DictConfig

from agglom.commands import Command
from agglom.config.schema import Recipe


def _run(cfg: DictConfig) -> int:
    from agglom.distill import train as run_training

    run_training(cfg)
    return 0


train = Command(schema=Recipe, run=_run, help="distil the recipe's teachers into a timm student (resumes automatically)")
