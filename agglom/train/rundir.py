"""A run directory's config: written once when the run starts, compared on every resume.

``config.yaml`` is what the run did, so it is written when a run starts (or restarts before its first
checkpoint) and never rewritten. A resume compares the new config with it key by key (keys of the training
recipe only; a command's own sections such as ``sweep.*`` are not part of the run): a difference in a key that
changes what is trained is refused with the differing keys, naming how to go on (a new ``name=``, optionally
``resume=`` this run's checkpoint); a difference only in :data:`SAFE_ON_RESUME` keys (logging and the like, which
leave the weights as they would have been) is allowed and recorded in ``config_changes.jsonl`` and
``metrics.jsonl``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from agglom.config.load import ConfigError, read_recipe
from agglom.config.schema import Recipe

SAFE_ON_RESUME = ("resume", "log.interval", "log.tensorboard", "log.progress", "log.checkpoint_interval", "log.keep",
                  "log.all_ranks", "optim.max_bad_steps", "eval.", "export.")
CHANGES = "config_changes.jsonl"


_WHOLE = ("student.model_args", "objective.routing", "data.group_weights")  # free-form dicts: compared whole


def _flat(node: Any, prefix: str = "") -> Dict[str, Any]:
    """Dotted leaf -> value (lists and free-form dicts compared whole)."""
    out: Dict[str, Any] = {}
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in _WHOLE:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def recipe_view(cfg: Any, schema: Any = None) -> Dict[str, Any]:
    """The training recipe's keys of ``cfg`` (any Recipe subclass; or of another command's ``schema``, such as
    finetune's), resolved, as dotted leaves."""
    base = OmegaConf.structured(schema or Recipe)
    merged = OmegaConf.merge(base, {k: cfg[k] for k in base.keys() if k in cfg})
    return _flat(OmegaConf.to_container(merged, resolve=True))


def config_diff(old: Any, new: Any, schema: Any = None) -> Dict[str, Tuple[Any, Any]]:
    a, b = recipe_view(old, schema), recipe_view(new, schema)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def _safe(key: str, safe: Sequence[str] = SAFE_ON_RESUME) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in safe)


def saved_config(run_dir: Path, schema: Any = None) -> Optional[DictConfig]:
    """A run's saved ``config.yaml`` over ``schema``'s defaults (keys the schema no longer has are left out), or
    None when there is none; not validated (:func:`agglom.runs.run_config` validates it, for reading a run)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    loaded = read_recipe(str(path))
    base = OmegaConf.structured(schema or Recipe)
    if not isinstance(loaded, dict) or not loaded:
        raise ConfigError(f"{path}: not a run's config (a mapping of sections, as `agglom train` writes it)")
    try:
        return OmegaConf.merge(base, {k: v for k, v in loaded.items() if k in base})
    except Exception as e:  # noqa: BLE001 - omegaconf's merge errors: a damaged or hand-edited saved config
        raise ConfigError(f"{path}: {str(e).splitlines()[0]} (a damaged or hand-edited run config)") from None


def check_resume(cfg: Any, run_dir: Path, resume_from: Optional[Path], has_checkpoint: bool, schema: Any = None,
                 safe: Sequence[str] = SAFE_ON_RESUME) -> Dict[str, Any]:
    """Refuse what would overwrite or silently alter a run; returns the safe changes to record ({} if none).
    ``schema`` (default: the training Recipe) names the keys compared, ``safe`` those that may change."""
    run_dir = Path(run_dir)
    if has_checkpoint and resume_from is None:
        raise ConfigError(f"{run_dir} already holds a trained run (resume={cfg.resume}); resuming is the default "
                          f"(resume=auto). To start over, choose another name= or remove the folder")
    if resume_from is None or not has_checkpoint:
        return {}
    if run_dir.resolve() not in Path(resume_from).resolve().parents:
        raise ConfigError(f"{run_dir} already holds a trained run; resume={cfg.resume} would continue another "
                          f"checkpoint into it. Give the continuation its own name=")
    old = saved_config(run_dir, schema)
    if old is None:
        return {}
    diff = config_diff(old, cfg, schema)
    unsafe = {k: v for k, v in diff.items() if not _safe(k, safe)}
    if unsafe:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(unsafe.items())[:8])
        more = f" (and {len(unsafe) - 8} more)" if len(unsafe) > 8 else ""
        raise ConfigError(f"{run_dir} was trained with other settings, so resuming it would not reproduce either "
                          f"run: {shown}{more}. Run the same command as before to resume it, or give this one its own "
                          f"name= (add resume={run_dir} to start from this run's last checkpoint). Only "
                          f"{', '.join(safe)} may change on resume")
    return {k: [a, b] for k, (a, b) in diff.items()}


def record_changes(run_dir: Path, changes: Dict[str, Any], step: int) -> None:
    """Append the safe changes of this resume to ``config_changes.jsonl`` (config.yaml stays as first written)."""
    if not changes:
        return
    rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "at_step": int(step), "changes": changes}
    with open(Path(run_dir) / CHANGES, "a") as f:
        f.write(json.dumps(rec) + "\n")
    print("agglom: resuming with changed settings (recorded in config_changes.jsonl): "
          + "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items()), flush=True)


def read_changes(run_dir: Path) -> List[Dict[str, Any]]:
    path = Path(run_dir) / CHANGES
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


__all__ = ["SAFE_ON_RESUME", "check_resume", "record_changes", "read_changes", "config_diff", "saved_config"]
