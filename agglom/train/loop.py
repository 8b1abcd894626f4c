"""`agglom train`: the loop, top to bottom.

build (engine, teachers, task, optimiser) -> resume or fit normalisers -> for each epoch of the resampled
stream: task step -> engine backward/step -> log -> checkpoint. A resumed run restores the model, optimiser,
objective state (group weights, teacher balance), EMA, RNG and data position, and so continues the same stream.
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig

from agglom.config.load import ConfigError, save_config, to_yaml
from agglom.data.counts import SkipCounts
from agglom.engine import build_engine
from agglom.task import AgglomTask, is_cached, teacher_spec
from agglom.train.checkpoint import CheckpointManager
from agglom.train.ema import ModelEMA
from agglom.train.logger import MetricLogger
from agglom.train.optim import param_groups, warmup_cosine
from agglom.train.preflight import checkpoint_of, preflight
from agglom.train.rundir import check_resume, record_changes
from agglom.train.runlock import RunLock
from agglom.train.setup import build_teachers, group_names, in_chans_of, stats_batches


def seed_everything(seed: int) -> None:
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


def resolve_resume(cfg: DictConfig, run_dir: Path) -> Optional[Path]:
    """The checkpoint to resume: this run's latest (``resume=auto``), none (``never``) or the one ``resume=`` names."""
    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        return checkpoint_of(Path(run_dir) / "checkpoints")
    path = checkpoint_of(Path(cfg.resume))
    if path is None:
        raise ConfigError(f"resume: {cfg.resume} is not a checkpoint, a checkpoints/ folder or a run dir")
    return path


def data_counts(engine: Any, before: SkipCounts, loader: Any) -> SkipCounts:
    """Counts of the whole run so far: ``before`` (all ranks, earlier epochs or the resumed checkpoint) plus what
    every rank's current loader has yielded. Every rank calls this at the same step (checkpoints, epoch ends)."""
    out = SkipCounts().add(before)
    for part in engine.gather_objects(loader.stats.to_json() if loader is not None else None):
        out.add(part)
    return out


def write_run_files(cfg: DictConfig, run_dir: Path, specs: list, task: AgglomTask, routing: Optional[Dict]) -> None:
    """config.yaml, teachers.json, groups.json (+ routing.json) of a run that starts: written once per run."""
    save_config(cfg, run_dir / "config.yaml")
    print(to_yaml(cfg), flush=True)
    (run_dir / "teachers.json").write_text(json.dumps([s.to_dict() for s in specs], indent=1))
    (run_dir / "groups.json").write_text(json.dumps({"by": cfg.groups.by, "names": task.group_names}, indent=1))
    if routing:
        (run_dir / "routing.json").write_text(json.dumps(routing, indent=1))
        print("agglom: routing from the teacher audit (val AUC -> weight): " + "; ".join(
            f"{t}: " + ", ".join(f"{g} {a if a is None else round(a, 3)} -> {w:.2f}"
                                 for g, a, w in zip(routing["groups"], au, ws))
            for t, au, ws in zip(routing["teachers"], routing["auc"], routing["weights"])), flush=True)


def estimate_flops_per_sample(task: AgglomTask, batch: Dict[str, Any]) -> float:
    """Training FLOPs per sample: 3x the student+heads forward (fwd + bwd) + the online teachers' forwards."""
    from torch.utils.flop_counter import FlopCounterMode

    image = batch["image"][:2].to(task.device)
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            task.model(image)
    student = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            for s in task.specs:
                if not is_cached(task.teachers[s.name]):
                    task.teachers[s.name](image)
    return (3 * student + counter.get_total_flops()) / image.shape[0]


def train(cfg: DictConfig) -> Path:
    """Train the recipe into ``<out_dir>/<name>``; checks data, teachers and paths first, then holds the run's lock
    for the whole run (a second writer is refused, naming the holder)."""
    preflight(cfg)  # on disk, before anything is built or written
    engine = build_engine(cfg)
    run_dir = Path(cfg.out_dir) / cfg.name
    with RunLock(run_dir, engine):
        return _train(cfg, engine, run_dir)


def _train(cfg: DictConfig, engine: Any, run_dir: Path) -> Path:
    from agglom.data.readers import train_loader

    info = engine.info
    seed_everything(cfg.seed * 1000 + info.rank)
    resume_from = resolve_resume(cfg, run_dir)
    own_checkpoint = checkpoint_of(run_dir / "checkpoints") is not None
    changes = check_resume(cfg, run_dir, resume_from, own_checkpoint)  # refuse before anything is built

    # ---- build: teachers are frozen and live outside the trainable module ----
    teachers = build_teachers(cfg, engine.device)
    specs = [teacher_spec(e, teachers[e.name]) for e in cfg.teachers]
    groups = group_names(cfg)
    routing = None
    if cfg.objective.route_by_audit > 0:  # teacher x group weights from a validation audit of the teachers
        from agglom.eval.audit import audit_routing

        routing = audit_routing(cfg, teachers, groups, engine.device, run_dir)
    task = AgglomTask(cfg, specs, teachers, groups, in_chans_of(cfg),
                      auto_routing=torch.tensor(routing["weights"]) if routing else None)
    ema = ModelEMA(task.model, cfg.optim.ema) if cfg.optim.ema > 0 else None
    forward_model = engine.setup(task.model, param_groups(task.model, cfg.optim.weight_decay), warmup_cosine(cfg.optim))
    if cfg.engine.compile:
        forward_model = torch.compile(forward_model)
    task.attach(forward_model, engine.device, engine.autocast())
    if ema is not None:
        ema.to(engine.device)
    # everything built: only now are the run's files written — once, when the run starts (a resume keeps the
    # config it started with and records allowed changes), so a launch that fails never touches a run's config
    first = stats_batches(cfg) if resume_from is None else None  # reads the data: no usable sample fails here
    if engine.is_main and not (resume_from is not None and own_checkpoint):
        write_run_files(cfg, run_dir, specs, task, routing)

    # ---- resume, or start fresh with a stats pass for the normalisers ----
    ckpts = CheckpointManager(run_dir, cfg.log.keep, engine.is_main)
    stateful = {"objective": task.objective}
    if ema is not None:
        stateful["ema"] = ema
    state: Dict[str, Any] = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "samples": 0, "train_seconds": 0.0,
                             "bad_steps_total": 0, "data": SkipCounts().to_json(), "flops_per_sample": None,
                             "device": engine.device.type, "world_size": info.world_size}
    if resume_from is not None:
        state.update(ckpts.load(resume_from, engine, stateful))
        if engine.is_main:
            print(f"agglom: resumed from {resume_from} at step {state['step']}", flush=True)
    else:
        task.fit_normalisers(first)
    counts = SkipCounts.from_json(state.get("data") or state.get("skipped"))  # all ranks, up to the checkpoint
    logger = MetricLogger(run_dir, cfg.log, cfg.optim.steps, engine.is_main, start_step=state["step"])
    logger.event({"event": "resume" if resume_from else "start", "at_step": state["step"], "step": state["step"]})
    if engine.is_main and changes:
        record_changes(run_dir, changes, state["step"])
        logger.event({"event": "config_change", "step": state["step"], "changes": changes})

    # ---- the loop ----
    total, accum = int(cfg.optim.steps), max(1, int(cfg.optim.accum_steps))
    bad_in_row, micro = 0, 0
    task.train()
    t_last, t_data, n_since = time.perf_counter(), 0.0, 0
    while state["step"] < total:
        loader = train_loader(cfg, epoch=state["epoch"], skip_batches=state["batch_in_epoch"])
        t_fetch = time.perf_counter()
        finished_epoch = True
        for batch in rng_isolated(loader):
            t_data += time.perf_counter() - t_fetch
            if state["flops_per_sample"] is None:
                state["flops_per_sample"] = estimate_flops_per_sample(task, batch)
            terms = task(batch)
            loss = terms["loss"]
            state["batch_in_epoch"] += 1
            if engine.all_reduce_min(float(torch.isfinite(loss).item())) < 1:
                bad_in_row += 1
                state["bad_steps_total"] += 1
                engine.zero_grad()
                micro = 0
                logger.event({"event": "nonfinite_loss", "step": state["step"], "in_a_row": bad_in_row})
                if bad_in_row >= cfg.optim.max_bad_steps:
                    raise FloatingPointError(
                        f"{bad_in_row} non-finite losses in a row at step {state['step']}: stopping. Lower optim.lr, "
                        f"check the data (agglom data info) or resume from the last checkpoint.")
                t_fetch = time.perf_counter()
                continue
            engine.backward(loss)
            micro += 1
            n_since += int(batch["image"].shape[0])
            if micro < accum:
                t_fetch = time.perf_counter()
                continue
            micro, bad_in_row = 0, 0
            grad_norm = engine.step(state["step"])
            if ema is not None:
                ema.update(engine.unwrap())
            state["step"] += 1
            state["samples"] += n_since * info.world_size
            now = time.perf_counter()
            state["train_seconds"] += now - t_last
            metrics = {k: v.detach() for k, v in terms.items()}
            metrics.update(lr=engine.current_lr(), grad_norm=grad_norm, epoch=state["epoch"])
            if state["step"] % cfg.log.interval == 0 or state["step"] == total:
                metrics.update(task.tracked())
                metrics.update(samples_per_s=n_since * info.world_size / max(now - t_last, 1e-9), data_s=t_data)
            logger.step(state["step"], metrics, force=state["step"] == total)
            t_last, t_data, n_since = now, 0.0, 0
            if state["step"] % cfg.log.checkpoint_interval == 0 or state["step"] == total:
                state["data"] = data_counts(engine, counts, loader).to_json()
                ckpts.save(state["step"], engine, state, stateful)
            if state["step"] >= total:
                finished_epoch = False
                break
            t_fetch = time.perf_counter()
        # what this epoch's reading skipped, up to the last batch used (all ranks)
        counts = data_counts(engine, counts, loader)
        state["data"] = counts.to_json()
        if counts:
            logger.event({"event": "data", "step": state["step"], "epoch": state["epoch"], **counts.summary()})
        if finished_epoch:
            state["epoch"] += 1
            state["batch_in_epoch"] = 0

    data = counts.summary()
    logger.event({"event": "end", "step": state["step"], "train_seconds": state["train_seconds"], **data})
    logger.close()
    if engine.is_main:
        summary = {k: state[k] for k in ("step", "samples", "train_seconds", "flops_per_sample", "device",
                                         "world_size", "bad_steps_total")}
        summary.update(data)  # skipped (reason -> distinct samples/shards), noted (reason -> reads), examples
        if summary["flops_per_sample"]:
            summary["train_flops"] = summary["flops_per_sample"] * state["samples"]
        (run_dir / "run.json").write_text(json.dumps(summary, indent=1))
        if counts:
            print(f"agglom: training data: {counts.describe()}", flush=True)
        print(f"agglom: trained {state['step']} steps -> {run_dir}", flush=True)
    engine.close()
    return run_dir


def final_losses(run_dir: Path) -> List[float]:
    recs = MetricLogger.read(Path(run_dir) / "metrics.jsonl")
    return [r["loss"] for r in recs if "loss" in r and r["loss"] is not None and not math.isnan(r["loss"])]
