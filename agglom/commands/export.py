"""`agglom export run=<dir> [out=<dir>]`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agglom.commands import Command


@dataclass
class ExportArgs:
    run: str = ""
    out: Optional[str] = None  # default: <run>/export
    ema: bool = True  # export EMA weights when the run kept them
    checkpoint: Optional[str] = None
    min_group_count: int = 10
    push_to_hub: Optional[str] = None
    force: bool = True


def _run(cfg) -> int:
    from pathlib import Path

    from agglom.config.load import ConfigError
    from agglom.export.timm_folder import export_run, push_to_hub

    if not cfg.run:
        raise ConfigError("export: give run=<run dir>")
    out = export_run(Path(cfg.run), Path(cfg.out) if cfg.out else None, use_ema=cfg.ema, force=cfg.force,
                     min_group_count=cfg.min_group_count, checkpoint=Path(cfg.checkpoint) if cfg.checkpoint else None)
    print(f"agglom export: {out}\n  timm: timm.create_model('local-dir:{out.resolve()}', pretrained=True)\n"
          f"  adapters: agglom.export.load_adapter_pack('{out}')\n  model card: {out / 'README.md'}")
    if cfg.push_to_hub:
        push_to_hub(out, cfg.push_to_hub)
    return 0


export = Command(schema=ExportArgs, run=_run, help="export a run's student as a timm folder + adapter pack + model card",
                 positional="run")
