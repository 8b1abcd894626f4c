"""The DeepSpeed JSON config, generated from the recipe (no DeepSpeed import needed here).

Mapping (recipe key -> DeepSpeed key):

- `data.batch_size`          -> `train_micro_batch_size_per_gpu` (per rank, per micro-batch)
- `optim.accum_steps`        -> `gradient_accumulation_steps` (DeepSpeed derives `train_batch_size`)
- `optim.grad_clip`          -> `gradient_clipping` (0 = off)
- `engine.zero_stage`        -> `zero_optimization.stage` (0, 1, 2 or 3)
- `engine.offload_optimizer` -> `zero_optimization.offload_optimizer = {"device": "cpu"}` (stage >= 1)
- `engine.offload_params`    -> `zero_optimization.offload_param = {"device": "cpu"}` (stage 3 only)
- `engine.precision`         -> `bf16.enabled` (`auto`: bf16 on GPU, fp32 on CPU; `bf16`; `fp32`)

plus `steps_per_print` (large: the agglom logger reports) and `wall_clock_breakdown: false`.

`engine.ds_config`, when set, names a JSON file whose contents are *deep-merged over* the generated dict:
nested objects merge key by key and any other value in the file replaces the generated one. So a file
`{"zero_optimization": {"overlap_comm": true}}` keeps the recipe's stage and only adds `overlap_comm`, while
`{"gradient_clipping": 0.5}` overrides `optim.grad_clip`. The file must not define `optimizer` or `scheduler`:
the strategy always builds torch's AdamW from the recipe's param groups and applies the recipe's lr schedule.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import OmegaConf

ZERO_STAGES = (0, 1, 2, 3)
PRECISIONS = ("auto", "fp32", "bf16")


def _config_error(msg: str) -> Exception:
    from agglom.config.load import ConfigError

    return ConfigError(msg)


def accelerator_type() -> str:
    """"cuda" when a GPU is usable and DeepSpeed is not forced onto the CPU accelerator, else "cpu"."""
    if os.environ.get("DS_ACCELERATOR", "").lower() == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def use_bf16(precision: str, device_type: str) -> bool:
    if precision not in PRECISIONS:
        raise _config_error(f"engine.precision={precision!r} is not valid; choose one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device_type == "cuda")


def read_override(path: str) -> Dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise _config_error(f"engine.ds_config: file not found: {path}")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise _config_error(f"engine.ds_config: {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise _config_error(f"engine.ds_config: {path} must hold a JSON object")
    for key in ("optimizer", "scheduler"):
        if key in data:
            raise _config_error(f"engine.ds_config: {path} sets {key!r}; agglom builds the optimiser and lr "
                                f"schedule from the recipe's optim section, remove it")
    return data


def build_ds_config(cfg: Any, device_type: Optional[str] = None) -> Dict[str, Any]:
    """The DeepSpeed config dict for a recipe (see the module docstring for the mapping and the override)."""
    e, o = cfg.engine, cfg.optim
    device_type = device_type or accelerator_type()
    try:
        stage = int(e.zero_stage)
    except (TypeError, ValueError):
        stage = -1
    if stage not in ZERO_STAGES or isinstance(e.zero_stage, bool):
        raise _config_error(f"engine.zero_stage={e.zero_stage!r} is not valid; choose one of "
                            f"{', '.join(map(str, ZERO_STAGES))}")
    if e.offload_optimizer and stage < 1:
        raise _config_error("engine.offload_optimizer=true needs engine.zero_stage >= 1")
    if e.offload_params and stage != 3:
        raise _config_error("engine.offload_params=true needs engine.zero_stage=3")
    accum = int(o.accum_steps)
    if accum < 1:
        raise _config_error(f"optim.accum_steps={o.accum_steps} must be >= 1")
    zero: Dict[str, Any] = {"stage": stage}
    pin = device_type == "cuda"
    if e.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin}
    if e.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin}
    config: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(cfg.data.batch_size),
        "gradient_accumulation_steps": accum,
        "gradient_clipping": float(o.grad_clip) if o.grad_clip and o.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": use_bf16(e.precision, device_type)},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if e.ds_config:
        # dicts merge recursively, everything else (lists too) is replaced by the file's value
        config = OmegaConf.to_container(OmegaConf.merge(config, read_override(e.ds_config)), resolve=False)
    if int(config["zero_optimization"].get("stage", stage)) == 3 and float(o.get("ema", 0) or 0) > 0:
        # the EMA lerps the rank's parameters; under ZeRO-3 each rank holds only a partition of them
        raise _config_error(f"optim.ema={o.ema} needs every rank to hold whole parameters, and ZeRO stage 3 "
                            "partitions them: set optim.ema=0, or engine.zero_stage=2 or lower")
    return config
