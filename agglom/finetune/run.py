"""The `agglom finetune` driver: check the input, build the encoder and the task, run the shared loop, export.

The run's state (config.yaml, metrics.jsonl, checkpoints/) lives in ``run_dir`` (default ``<out>.run``, beside the
export folder, which must stay a clean teacher folder); the same command after a kill resumes from the last
checkpoint (``resume=auto``), under either engine. The export is written from the final checkpoint through
:meth:`agglom.engine.Engine.consolidate`, so a DeepSpeed run exports its fp32 weights.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig, OmegaConf

from agglom.config.load import ConfigError
from agglom.finetune.model import Encoder

# finetune keys that may change on resume: where the export goes, logging, validation (RNG-isolated), threads
SAFE_ON_RESUME = ("resume", "force", "out", "run_dir", "progress", "log_interval", "val_interval",
                  "checkpoint_interval", "keep", "threads", "licence", "description", "optim.max_bad_steps")


def paths(a: Any) -> tuple:
    """(export folder, run dir)."""
    out = Path(a.out) if a.out else Path(a.out_dir) / str(a.name)
    return out, Path(a.run_dir) if a.run_dir else out.with_name(out.name + ".run")


def check_args(a: Any) -> None:
    """Refuse bad input before anything is built (ConfigError: exit 2, naming the key)."""
    from agglom.curate.run import progress_mode
    from agglom.objective.groups import list_group_objectives

    if a.objective.group not in list_group_objectives():
        raise ConfigError(f"objective.group: {a.objective.group!r} is not one of {', '.join(list_group_objectives())}")
    a.progress = progress_mode(a.progress)
    if a.progress not in ("auto", "on", "off"):
        raise ConfigError(f"progress must be auto|on|off, got {a.progress!r}")
    if int(a.optim.steps) < 1:
        raise ConfigError(f"optim.steps must be >= 1, got {a.optim.steps}")
    if not (Path(a.data.root) / "dataset.json").is_file() and not a.data.shards:
        raise ConfigError(f"data.root: no dataset.json under {a.data.root} (write one with `agglom data synth|pack`)")
    out, _ = paths(a)
    from agglom.finetune.export import staging_dir

    staging_dir(out, a.force)  # before training: refuses an out= that is not an export agglom may replace


def loop_cfg(a: Any, enc: Encoder) -> DictConfig:
    """The recipe-shaped config the data layer, the engine and the loop read."""
    from agglom.config.schema import Recipe

    cfg = OmegaConf.structured(Recipe)
    d = OmegaConf.to_container(a.data, resolve=True)
    d.pop("mean", None)
    d.pop("std", None)
    d.update(image_size=int(enc.image_size), interpolation=enc.interpolation)
    cfg.data = OmegaConf.merge(cfg.data, d)
    cfg.student.mean, cfg.student.std = list(enc.mean), list(enc.std)
    cfg.groups = OmegaConf.merge(cfg.groups, OmegaConf.to_container(a.groups, resolve=True))
    o = OmegaConf.to_container(a.optim, resolve=True)
    o.pop("head_lr", None)
    cfg.optim = OmegaConf.merge(cfg.optim, o)
    cfg.engine = OmegaConf.merge(cfg.engine, OmegaConf.to_container(a.engine, resolve=True))
    if cfg.engine.device == "auto" and str(a.device) != "auto":
        cfg.engine.device = str(a.device)
    cfg.log = OmegaConf.merge(cfg.log, {"interval": max(1, int(a.log_interval)), "progress": str(a.progress),
                                        "checkpoint_interval": int(a.checkpoint_interval), "keep": int(a.keep)})
    cfg.seed, cfg.name, cfg.resume = int(a.seed), str(a.name), str(a.resume)
    if cfg.data.grayscale != "replicate":
        raise ConfigError("data.grayscale: finetune trains and exports a 3-channel encoder (the teacher zoo feeds "
                          "3 channels); use data.grayscale=replicate")
    return cfg


def build_task(a: Any, cfg: DictConfig, enc: Encoder) -> Any:
    """The label task from the datasheet (or the first batch), the groups from the readers' indexer."""
    from agglom.data.readers import group_indexer, train_loader
    from agglom.data.shards import dataset_datasheet
    from agglom.finetune.task import FinetuneTask, task_from_batch, task_of

    sheet = dataset_datasheet(cfg) or {}
    if not sheet.get("label"):
        raise ConfigError("finetune trains a supervised head, so it needs labelled data, and this dataset's "
                          "datasheet (dataset.json) declares no labels; pack labelled data with `agglom data pack`")
    if list(cfg.data.get("distill_splits") or []):
        raise ConfigError(f"data.distill_splits={list(cfg.data.distill_splits)}: finetune trains on labels, and "
                          "distill splits are label-free images for the student's distillation; leave it empty here")
    gidx = group_indexer(cfg)  # datasheet + sidecars: the same indexer the readers use
    label_task = task_of(sheet)
    if label_task is None:  # the datasheet does not say how many classes: the first batch does
        first = next(iter(train_loader(cfg)), None)
        if first is None:
            raise ConfigError(f"data: no training samples under {cfg.data.root} (split {cfg.data.train_split!r})")
        label_task = task_from_batch(first["label"])
    task = FinetuneTask(cfg, a, enc, label_task, list(gidx.names), gidx.unknown_index)
    task.datasheet = sheet
    return task


def read_history(run_dir: Path) -> tuple:
    """(step records, validation records) of the run, from its metrics.jsonl."""
    from agglom.train.logger import MetricLogger

    recs = MetricLogger.read(run_dir / "metrics.jsonl")
    history: List[Dict[str, Any]] = []
    for r in recs:
        if "loss" not in r or "event" in r:
            continue
        keep = {k: r[k] for k in ("step", "loss", "lr", "utility", "parity", "grad_norm") if k in r}
        keep.update({f"loss/{k[6:]}": v for k, v in r.items() if k.startswith("group/")})
        keep.update({k: v for k, v in r.items() if k.startswith("q/")})
        history.append(keep)
    return history, [r for r in recs if r.get("event") == "validation"]


def train_and_export(a: Any, enc: Encoder, out: Path, run_dir: Path) -> Dict[str, Any]:
    """Run the loop under the engine (with the run's lock), then export from the final checkpoint (rank 0)."""
    from agglom.engine import build_engine
    from agglom.finetune.export import export_encoder, method_line
    from agglom.finetune.family_export import export_family
    from agglom.finetune.lora import merge
    from agglom.finetune.task import Validation
    from agglom.runlock import RunLock
    from agglom.train.loop import Loop, start_run
    from agglom.train.preflight import checkpoint_of

    t0 = time.perf_counter()
    cfg = loop_cfg(a, enc)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"finetune {a.name}: {enc.family} encoder, {method_line(enc)}", flush=True)
    engine = build_engine(cfg)
    with RunLock(run_dir, engine):
        start = start_run(a, run_dir, schema=OmegaConf.get_type(a), safe=SAFE_ON_RESUME)
        task = build_task(a, cfg, enc)
        val = Validation(task, int(a.val_interval), engine.is_main)
        state = Loop(cfg, engine, run_dir, task, start, [val]).run()
        result: Dict[str, Any] = {"out": None}
        if engine.is_main:
            weights = engine.consolidate(checkpoint_of(run_dir / "checkpoints"))
            enc.model.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
            if enc.lora is not None:  # fold the adapters into the base weights: the export is a plain encoder
                merge(enc.lora)
            result = collect(a, task, state, run_dir, val, time.perf_counter() - t0)
            result.update(family=enc.family, method=method_line(enc), params=dict(enc.params))
            write = export_family if enc.family_path else export_encoder
            result["out"] = write(a, enc, result, out, force=bool(a.force))
        engine.close()
    return result


def collect(a: Any, task: Any, state: Dict[str, Any], run_dir: Path, val: Any, seconds: float) -> Dict[str, Any]:
    """What finetune.json and the card record: history, validation, final per-group metrics, timings."""
    history, vals = read_history(run_dir)
    final = vals[-1]["metrics"] if vals and vals[-1]["step"] == state["step"] else task.validate()
    train_s = max(1e-9, float(state["train_seconds"]))
    return {"task": task.task, "objective": task.objective, "group_names": task.group_names, "history": history,
            "val_history": [{"step": v["step"], "auc": v["metrics"]["auc"],
                             "worst_group_auc": v["metrics"]["worst_group_auc"],
                             "groups": {n: g["auc"] for n, g in v["metrics"]["groups"].items()}} for v in vals],
            "final": final, "datasheet": task.datasheet, "samples_seen": int(state["samples"]),
            "epochs": int(state["epoch"]), "run_dir": str(run_dir),
            "seconds": {"total": round(seconds, 3), "validation": round(val.seconds, 3),
                        "train": round(train_s, 3), "train_steps_per_s": round(int(state["step"]) / train_s, 3)}}


def run_finetune(a: Any) -> Dict[str, Any]:
    """Check, build the encoder, train (resuming a killed run), export; returns the result with its table."""
    from agglom.finetune.export import summary_table
    from agglom.finetune.model import build_encoder

    check_args(a)
    out, run_dir = paths(a)
    threads = int(a.threads)
    device = str(a.engine.device if a.engine.device != "auto" else a.device)
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if threads == 0 and on_cpu:
        # a small model gains little from a second thread, and oversubscribed OpenMP threads (data workers on the
        # same cores) slowed 150 demo steps ~10x on 2 shared cores; measured: 1 thread ~21 steps/s steadily
        threads = max(1, (os.cpu_count() or 1) - int(a.data.num_workers))
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        result = train_and_export(a, build_encoder(a), out, run_dir)
    finally:
        torch.set_num_threads(before)
    if result.get("out") is not None:
        result["table"] = summary_table(a, result, result["out"])
    return result
