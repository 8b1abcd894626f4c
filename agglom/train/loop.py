"""The one training loop, top to bottom, shared by every task (distillation, fine-tuning).

A task is an ``nn.Module`` holding the trainable part in ``task.model`` (what the engine wraps) and returning
``{"loss": scalar, **named terms}`` from ``task(batch)``; everything else is the loop's, so every task gets the
same engine strategies (torch/DDP, DeepSpeed), atomic checkpoints and exact resume after kill -9.

    start_run (resume point, config check) -> caller builds the task -> Loop.run():
    setup (engine wraps task.model, EMA) -> task.prepare -> run files -> resume or fresh -> for each epoch of the
    resampled stream: micro-steps (forward, non-finite guard, backward) -> optimiser step -> log -> hooks ->
    checkpoint -> end (run.json)

A resumed run restores the model, optimiser, the task's stateful modules (group weights, teacher balance), EMA,
RNG and data position, and so continues the same stream.

What the loop asks of a task is :class:`agglom.train.task_protocol.LoopTask` (agglom/train/task_protocol.py):
the methods every task writes, and the optional hooks (``stateful``, ``prepare``, ``tracked``, ``worker_reads``,
``step_batch``) with defaults, so the loop calls each one unconditionally. :class:`agglom.distill.task.AgglomTask`
and :class:`agglom.finetune.task.FinetuneTask` implement it.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig
from timm.utils import ModelEmaV3

from agglom.config.load import ConfigError
from agglom.data.counts import SkipCounts
from agglom.phases import PhaseTimer
from agglom.train.checkpoint import CheckpointManager
from agglom.train.energy import EnergyMeter, energy_record
from agglom.train.logger import MetricLogger
from agglom.train.optim import warmup_cosine
from agglom.train.preflight import checkpoint_of
from agglom.train.rundir import SAFE_ON_RESUME, check_resume, record_changes
from agglom.train.task_protocol import LoopTask


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs from one seed (the caller adds the rank)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_isolated(iterable: Any) -> Iterator[Any]:
    """Iterate without touching the global RNG: a DataLoader draws its worker base seed from it when it starts,
    and a resumed run starts its loader at another point of the stream than an uninterrupted one."""
    it = iter(iterable)
    while True:
        state = torch.get_rng_state()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            torch.set_rng_state(state)
        yield item


def resolve_resume(cfg: Any, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume: this run's latest (``resume=auto``), none (``never``) or the one ``resume=`` names."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return checkpoint_of(Path(run_dir) / "checkpoints")
    path = checkpoint_of(Path(cfg.resume))
    if path is None:
        raise ConfigError(f"resume: {cfg.resume} is not a checkpoint, a checkpoints/ folder or a run dir")
    return path


@dataclass
class RunStart:
    """Where a run starts: the checkpoint to resume (None: fresh), whether it is this run's own, and the safe
    config changes to record. Decided before anything is built, so a refused resume costs nothing."""

    resume_from: Optional[Path]
    own_checkpoint: bool
    changes: Dict[str, Any] = field(default_factory=dict)

    @property
    def fresh(self) -> bool:
        return self.resume_from is None


def start_run(cfg: Any, run_dir: Path, schema: Any = None, safe: Sequence[str] = SAFE_ON_RESUME) -> RunStart:
    """Resolve ``cfg.resume`` against ``run_dir`` and refuse a resume whose ``schema`` keys changed (see rundir)."""
    resume_from = resolve_resume(cfg, run_dir)
    own = checkpoint_of(Path(run_dir) / "checkpoints") is not None
    return RunStart(resume_from, own, check_resume(cfg, run_dir, resume_from, own, schema=schema, safe=safe))


def data_counts(engine: Any, before: SkipCounts, loader: Any) -> SkipCounts:
    """Counts of the whole run so far: ``before`` (all ranks, earlier epochs or the resumed checkpoint) plus what
    every rank's current loader has yielded. Every rank calls this at the same step (checkpoints, epoch ends)."""
    out = SkipCounts().add(before)
    for part in engine.gather_objects(loader.stats.to_json() if loader is not None else None):
        out.add(part)
    return out


class LoopHooks:
    """Where code outside the loop looks in without patching it: a benchmark's clock (``on_batch``), a task's
    validation (``on_step``, after the step is logged and before it is checkpointed, so a resumed run repeats
    exactly what an uninterrupted one did after the checkpoint)."""

    def on_batch(self, batch: Dict[str, Any]) -> None:
        """Called as each training batch arrives from the reader (every micro-batch)."""

    def on_step(self, step: int, total: int, logger: MetricLogger) -> None:
        """Called after optimiser step ``step`` (1-based) is logged."""


class Throughput:
    """Samples per second and data-wait seconds between two logged steps (the throughput timer)."""

    def __init__(self) -> None:
        self.t_last = self.t_fetch = time.perf_counter()
        self.data_s, self.samples = 0.0, 0

    def waiting(self) -> None:
        """The loop asks the reader for the next batch now."""
        self.t_fetch = time.perf_counter()

    def arrived(self) -> float:
        """The batch is here; returns the seconds waited for it."""
        wait = time.perf_counter() - self.t_fetch
        self.data_s += wait
        return wait

    def count(self, n: int) -> None:
        """``n`` samples went into the step being accumulated."""
        self.samples += n

    def lap(self) -> Dict[str, float]:
        """Seconds, samples and data wait since the last lap; starts the next one."""
        now = time.perf_counter()
        out = {"seconds": now - self.t_last, "samples": self.samples, "data_s": self.data_s}
        self.t_last, self.data_s, self.samples = now, 0.0, 0
        return out


class NonFiniteGuard:
    """A non-finite loss (on any rank) drops the micro-batch's window, is logged, and stops the run after
    ``max_bad`` in a row with a message that says what to do."""

    def __init__(self, engine: Any, max_bad: int) -> None:
        self.engine, self.max_bad, self.in_a_row = engine, int(max_bad), 0

    def finite(self, loss: torch.Tensor, state: Dict[str, Any], logger: MetricLogger) -> bool:
        if self.engine.all_reduce_min(float(torch.isfinite(loss).item())) >= 1:
            return True
        self.in_a_row += 1
        state["bad_steps_total"] += 1
        self.engine.zero_grad()
        logger.event({"event": "nonfinite_loss", "step": state["step"], "in_a_row": self.in_a_row})
        if self.in_a_row >= self.max_bad:
            raise FloatingPointError(
                f"{self.in_a_row} non-finite losses in a row at step {state['step']}: stopping. Lower optim.lr, "
                f"check the data (agglom data info) or resume from the last checkpoint.")
        return False

    def stepped(self) -> None:
        self.in_a_row = 0


def new_state(engine: Any) -> Dict[str, Any]:
    """What state.json carries besides tensors: position in the stream, counters, the run's device."""
    return {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples": 0, "train_seconds": 0.0, "bad_steps_total": 0,
            "data": SkipCounts().to_json(), "flops_per_sample": None, "device": engine.device.type,
            "world_size": engine.info.world_size}


class Loop:
    """One run of ``task`` under ``engine`` into ``run_dir``; :meth:`run` reads top to bottom."""

    def __init__(self, cfg: DictConfig, engine: Any, run_dir: Path, task: LoopTask, start: RunStart,
                 hooks: Sequence[LoopHooks] = ()) -> None:
        self.cfg, self.engine, self.run_dir, self.task, self.start = cfg, engine, Path(run_dir), task, start
        self.hooks = list(hooks)
        self.total, self.accum = int(cfg.optim.steps), max(1, int(cfg.optim.accum_steps))
        self.state = new_state(engine)
        self.ema: Optional[ModelEmaV3] = None
        self.micro = 0
        self.phases = PhaseTimer(False)

    def run(self) -> Dict[str, Any]:
        """Set up, resume or start, run epochs until ``optim.steps``, write run.json; returns the final state."""
        self.setup()
        self.task.prepare(self.start.fresh)  # reads the data: no usable sample fails here, before files are written
        if self.engine.is_main and not (self.start.resume_from is not None and self.start.own_checkpoint):
            self.task.write_run_files(self.run_dir)
        self.resume_or_start()
        self.task.train()
        while self.state["step"] < self.total:
            self.epoch()
        return self.finish()

    # ---- build: the engine wraps the trainable module; the frozen parts stay with the task ----
    def setup(self) -> None:
        cfg, task, engine = self.cfg, self.task, self.engine
        if cfg.optim.ema > 0:
            # timm's EMA: parameters lerp, buffers copied (bitwise what agglom's own EMA did, same state keys)
            self.ema = ModelEmaV3(task.model, decay=float(cfg.optim.ema), exclude_buffers=True)
        forward_model = engine.setup(task.model, task.param_groups(), warmup_cosine(cfg.optim))
        if cfg.engine.compile:
            forward_model = torch.compile(forward_model)
        task.attach(forward_model, engine.device, engine.autocast())
        # log.phases: the per-phase step timer, shared with the task (which marks teachers/student/heads_loss)
        self.phases = PhaseTimer(bool(cfg.log.get("phases", False)), engine.device)
        task.phases = self.phases
        if self.ema is not None:
            self.ema.to(engine.device)
        self.stateful = dict(task.stateful())
        if self.ema is not None:
            self.stateful["ema"] = self.ema

    def resume_or_start(self) -> None:
        """Restore the checkpoint (model, optimiser, stateful modules, RNG, data position) or start at step 0."""
        self.ckpts = CheckpointManager(self.run_dir, self.cfg.log.keep, self.engine.is_main)
        start, state = self.start, self.state
        if start.resume_from is not None:
            state.update(self.ckpts.load(start.resume_from, self.engine, self.stateful))
            if self.engine.is_main:
                print(f"agglom: resumed from {start.resume_from} at step {state['step']}", flush=True)
        self.counts = SkipCounts.from_json(state.get("data") or state.get("skipped"))  # all ranks, to the checkpoint
        self.logger = MetricLogger(self.run_dir, self.cfg.log, self.total, self.engine.is_main, start_step=state["step"],
                                   rank=self.engine.info.rank)
        self.logger.event({"event": "start" if start.fresh else "resume", "at_step": state["step"], "step": state["step"]})
        if self.engine.is_main and start.changes:
            record_changes(self.run_dir, start.changes, state["step"])
            self.logger.event({"event": "config_change", "step": state["step"], "changes": start.changes})
        self.guard = NonFiniteGuard(self.engine, self.cfg.optim.max_bad_steps)
        self.clock = Throughput()
        # the CPU packages' energy over the same steps as train_seconds (agglom/train/energy.py): one process only
        ws = self.engine.info.world_size
        self.meter = EnergyMeter(enabled=ws == 1, why_not="" if ws == 1 else f"a run over {ws} processes")
        self.metered_to = state["train_seconds"]

    # ---- one epoch of the resampled stream (resumed mid-epoch at the saved batch) ----
    def epoch(self) -> None:
        from agglom.data.readers import train_loader

        state = self.state
        attach = self.task.worker_reads()  # e.g. cached teacher features read in the data workers
        loader = train_loader(self.cfg, epoch=state["epoch"], skip_batches=state["batch_in_epoch"], attach=attach)
        finished, got_any = True, False
        self.clock.waiting()
        for batch in rng_isolated(loader):
            got_any = True
            for hook in self.hooks:
                hook.on_batch(batch)
            if self.micro_step(batch, loader) and state["step"] >= self.total:
                finished = False
                break
            self.clock.waiting()
        if not got_any and state["batch_in_epoch"] == 0:
            raise ConfigError(f"data: no training samples under {self.cfg.data.root} "
                              f"(split {self.cfg.data.train_split!r}; skipped: {loader.stats.describe()})")
        # what this epoch's reading skipped, up to the last batch used (all ranks)
        self.counts = data_counts(self.engine, self.counts, loader)
        state["data"] = self.counts.to_json()
        if self.counts:
            self.logger.event({"event": "data", "step": state["step"], "epoch": state["epoch"], **self.counts.summary()})
        if finished:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0

    def micro_step(self, batch: Dict[str, Any], loader: Any) -> bool:
        """Forward + backward of one micro-batch (nanoGPT's inner loop); the optimiser steps once every
        ``optim.accum_steps`` finite micro-batches. True when an optimiser step happened."""
        state = self.state
        self.phases.add("data", self.clock.arrived())
        batch = self.task.step_batch(batch, state["step"])  # e.g. the step's input size (data.resolutions)
        if state["flops_per_sample"] is None:
            state["flops_per_sample"] = self.task.flops_per_sample(batch)
        self.phases.start()  # the step-size and FLOP-count hooks above are charged to no phase
        terms = self.task(batch)
        state["batch_in_epoch"] += 1
        if not self.guard.finite(terms["loss"], state, self.logger):
            self.micro = 0
            return False
        self.phases.mark("heads_loss")  # the non-finite check's host sync
        self.engine.backward(terms["loss"])
        self.phases.mark("backward")
        self.clock.count(int(batch["image"].shape[0]))
        self.micro += 1
        if self.micro < self.accum:
            return False
        self.micro = 0
        self.guard.stepped()
        self.optimiser_step(terms, loader)
        return True

    def optimiser_step(self, terms: Dict[str, torch.Tensor], loader: Any) -> None:
        """Step (clip, lr schedule), EMA, log, hooks, checkpoint."""
        state, engine = self.state, self.engine
        grad_norm = engine.step(state["step"])
        if self.ema is not None:
            self.ema.update(engine.unwrap())
        self.phases.mark("optimiser")
        self.phases.stepped()
        state["step"] += 1
        lap = self.clock.lap()
        state["samples"] += lap["samples"] * engine.info.world_size
        state["train_seconds"] += lap["seconds"]
        step, last = state["step"], state["step"] == self.total
        metrics = {k: v.detach() for k, v in terms.items()}
        metrics.update(lr=engine.current_lr(), grad_norm=grad_norm, epoch=state["epoch"])
        if step % self.cfg.log.interval == 0 or last:
            metrics.update(self.task.tracked())
            metrics.update(samples_per_s=lap["samples"] * engine.info.world_size / max(lap["seconds"], 1e-9),
                           data_s=lap["data_s"])
            if self.phases.enabled:
                metrics.update(self.phases.lap())  # phase_s/<name>: seconds per step since the last log
        self.logger.step(step, metrics, force=last)
        for hook in self.hooks:
            hook.on_step(step, self.total, self.logger)
        if step % self.cfg.log.checkpoint_interval == 0 or last:
            self.meter_lap()
            state["data"] = data_counts(engine, self.counts, loader).to_json()
            self.ckpts.save(step, engine, state, self.stateful)

    def meter_lap(self) -> None:
        """Add the RAPL joules since the last lap, and the optimiser-step seconds they cover, to the state (saved
        with the checkpoint, like ``train_seconds``); nothing where no counter is read."""
        joules, state = self.meter.lap(), self.state
        if joules is not None:
            state["rapl_j"] = float(state.get("rapl_j") or 0.0) + joules
            state["rapl_seconds"] = float(state.get("rapl_seconds") or 0.0) + state["train_seconds"] - self.metered_to
        self.metered_to = state["train_seconds"]

    # ---- the end: run.json and the data summary ----
    def finish(self) -> Dict[str, Any]:
        state, counts = self.state, self.counts
        data = counts.summary()
        self.logger.event({"event": "end", "step": state["step"], "train_seconds": state["train_seconds"], **data})
        self.logger.close()
        if self.engine.is_main:
            summary = {k: state[k] for k in ("step", "samples", "train_seconds", "flops_per_sample", "device",
                                             "world_size", "bad_steps_total")}
            summary.update(data)  # skipped (reason -> distinct samples/shards), noted (reason -> reads), examples
            if summary["flops_per_sample"]:
                summary["train_flops"] = summary["flops_per_sample"] * state["samples"]
            summary["energy"] = energy_record(state, self.meter.why)  # kWh, gCO2e and how (agglom/train/energy.py)
            (self.run_dir / "run.json").write_text(json.dumps(summary, indent=1))
            if counts:
                print(f"agglom: training data: {counts.describe()}", flush=True)
            print(f"agglom: trained {state['step']} steps -> {self.run_dir}", flush=True)
        return state


def final_losses(run_dir: Path) -> List[float]:
    recs = MetricLogger.read(Path(run_dir) / "metrics.jsonl")
    return [r["loss"] for r in recs if "loss" in r and r["loss"] is not None and not math.isnan(r["loss"])]


