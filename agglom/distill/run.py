"""`agglom train`: distillation as a task of the shared loop (:mod:`agglom.train.loop`).

Checks data, teachers and paths first; holds the run's lock for the whole run (a second writer is refused,
naming the holder); decides the resume point before anything is built; builds the frozen teachers, the optional
audit routing and the :class:`~agglom.distill.task.AgglomTask`; then hands over to :class:`~agglom.train.loop.Loop`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig

from agglom.distill.audit import audit_routing
from agglom.distill.setup import build_teachers
from agglom.distill.task import AgglomTask, teacher_spec
from agglom.engine import build_engine
from agglom.runlock import RunLock
from agglom.train.loop import Loop, LoopHooks, seed_everything, start_run
from agglom.train.preflight import preflight
from agglom.train.setup import group_names, in_chans_of


def train(cfg: DictConfig, hooks: Sequence[LoopHooks] = ()) -> Path:
    """Train the recipe into ``<out_dir>/<name>``; ``hooks`` look into the loop (benchmarks)."""
    preflight(cfg)  # on disk, before anything is built or written
    engine = build_engine(cfg)
    run_dir = Path(cfg.out_dir) / cfg.name
    with RunLock(run_dir, engine):
        seed_everything(cfg.seed * 1000 + engine.info.rank)
        start = start_run(cfg, run_dir)  # refuse a changed resume before anything is built
        task = build_task(cfg, engine, run_dir)
        Loop(cfg, engine, run_dir, task, start, hooks).run()
        engine.close()
    return run_dir


def build_task(cfg: DictConfig, engine: Any, run_dir: Path) -> AgglomTask:
    """Teachers are frozen and live outside the trainable module; routing comes from the teacher audit when
    ``objective.route_by_audit`` asks for it."""
    teachers = build_teachers(cfg, engine.device)
    specs = [teacher_spec(e, teachers[e.name]) for e in cfg.teachers]
    groups = group_names(cfg)
    routing = None
    if cfg.objective.route_by_audit > 0:  # teacher x group weights from a validation audit of the teachers
        routing = audit_routing(cfg, teachers, groups, engine.device, run_dir)
    return AgglomTask(cfg, specs, teachers, groups, in_chans_of(cfg),
                      auto_routing=torch.tensor(routing["weights"]) if routing else None, routing_info=routing)
