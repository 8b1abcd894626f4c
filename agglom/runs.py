"""Reading a finished (or running) run directory: its config, teacher roster and trained weights."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from agglom.config.choices import input_channels
from agglom.config.load import ConfigError
from agglom.config.schema import Recipe
from agglom.model import AgglomModel, TeacherSpec


def run_config(run_dir: Path) -> DictConfig:
    """The run's saved ``config.yaml``, checked like a recipe (a run folder may come from someone else): keys the
    schema no longer has are left out, and every value goes through the config rules."""
    from agglom.config.validate import validate
    from agglom.train.rundir import saved_config

    cfg = saved_config(run_dir, Recipe)
    if cfg is None:
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml); train one with `agglom train`")
    try:
        return validate(cfg)
    except ConfigError as e:
        raise ConfigError(f"{Path(run_dir) / 'config.yaml'}: {e}") from None


MAX_DIM, MAX_GRID = 1 << 16, 4096  # a teacher's feature width and token grid side, far above any real one


def _check_spec(spec: TeacherSpec) -> TeacherSpec:
    dims_ok = all(isinstance(v, int) and 1 <= v <= MAX_DIM for v in (spec.summary_dim, spec.spatial_dim))
    grid_ok = len(spec.grid) == 2 and all(isinstance(v, int) and 1 <= v <= MAX_GRID for v in spec.grid)
    if not (dims_ok and grid_ok and isinstance(spec.name, str) and spec.name):
        raise ValueError(f"teacher {spec.name!r}: dims {spec.summary_dim}/{spec.spatial_dim} (1..{MAX_DIM}), grid "
                         f"{list(spec.grid)} (1..{MAX_GRID})")
    return spec


def run_specs(run_dir: Path) -> List[TeacherSpec]:
    from agglom.data.jsonfile import read_json

    fix = "it is written by `agglom train`; train the run again or ask its sender for an intact copy"
    entries = read_json(Path(run_dir) / "teachers.json", fix)
    try:
        return [_check_spec(TeacherSpec.from_dict(d)) for d in entries]
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise ConfigError(f"{Path(run_dir) / 'teachers.json'}: not the teacher roster agglom writes ({e}); {fix}") from None


def latest_checkpoint(run_dir: Path) -> Path:
    """The run's last checkpoint; refused while another process still trains the run (its latest checkpoint is
    then a step on the way, not the run's result) and when the pointer names anything but a checkpoint folder."""
    from agglom.runlock import held_by

    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest"
    if not pointer.is_file():
        raise ConfigError(f"{run_dir} has no checkpoint yet (checkpoints/latest missing)")
    holder = held_by(Path(run_dir))
    if holder:
        raise ConfigError(f"{run_dir} is still being trained by {holder}; its latest checkpoint is a step on the way, "
                          "not the result. Wait for the run to finish (or give checkpoint=PATH to use one knowingly)")
    name = pointer.read_text().strip()
    if not name or Path(name).name != name or not (root / name).is_dir() or (root / name).is_symlink():
        raise ConfigError(f"{pointer} names {name[:80]!r}, which is not a checkpoint folder in {root}")
    return root / name


def trained_state(ckpt: Path, use_ema: bool = True, engine: str = "torch") -> Dict[str, torch.Tensor]:
    """The trainable module's fp32 state dict from a checkpoint written by the ``engine`` strategy (the run's
    ``engine.name``, which chooses how to consolidate it); the EMA weights when present."""
    from agglom.engine import engine_class
    from teachers.safe_load import load_safetensors as load_file  # refuses a pickle named *.safetensors, by name

    if use_ema and (ckpt / "ema.safetensors").is_file():
        ema = load_file(ckpt / "ema.safetensors")
        return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}
    return engine_class(engine).consolidate(ckpt)


def load_run_model(run_dir: Path, checkpoint: Optional[Path] = None, use_ema: bool = True) -> AgglomModel:
    """Rebuild the run's AgglomModel (student + heads + normalisers) and load its trained weights."""
    cfg = run_config(run_dir)
    in_chans = input_channels(cfg.data.grayscale)
    try:  # a received config that builds no model (an unknown timm name, a negative patch) is a damaged run
        model = AgglomModel(cfg, run_specs(run_dir), in_chans)
    except (ValueError, RuntimeError, TypeError, KeyError) as e:
        raise ConfigError(f"{run_dir}: its config.yaml and teachers.json build no model "
                          f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    state = trained_state(Path(checkpoint) if checkpoint else latest_checkpoint(run_dir), use_ema, cfg.engine.name)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"{run_dir}: the checkpoint's weights do not fit the model its config.yaml describes "
                          f"({str(e).splitlines()[0][:200]}); the run folder is damaged or mixed") from None
    return model.eval()


def run_summary(run_dir: Path) -> Dict[str, Any]:
    path = Path(run_dir) / "run.json"
    from agglom.data.jsonfile import read_json

    return read_json(path) if path.is_file() else {}


#: where `agglom eval RUN` writes a run's report (its folder holds predictions.csv and the plots too)
EVAL_DIR = "eval"
EVAL_REPORT = f"{EVAL_DIR}/report.json"


def eval_report(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The run's evaluation report (``eval/report.json``), or None when the run was not evaluated."""
    from agglom.data.jsonfile import read_json_object

    path = Path(run_dir) / EVAL_REPORT
    return read_json_object(path, fix=f"re-run `agglom eval {run_dir}`") if path.is_file() else None
