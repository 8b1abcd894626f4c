"""Writing an evaluation: ``report.json`` (validated, NaN -> null) and ``report.md``, the prediction files the
sections added, the figures, and the console summary."""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from agglom.eval.metrics import nan_to_none
from agglom.eval.predictions import write_predictions_csv
from agglom.eval.report.markdown import render_markdown, summary_table
from agglom.eval.report.schema import SCHEMA, validate_report

__all__ = ["write_report", "write_all"]


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> Dict[str, str]:
    """Validate and write ``report.json`` (NaN -> null) and ``report.md``; returns ``{"json": path, "md": path}``."""
    d = dict(report)
    d.setdefault("schema", SCHEMA)
    d.setdefault("created", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    d = nan_to_none(d)
    validate_report(d)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pj, pm = out / "report.json", out / "report.md"
    pj.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
    pm.write_text(render_markdown(d))
    return {"json": str(pj), "md": str(pm)}


def write_all(out_dir: Path, report: Dict[str, Any], csvs: Optional[Mapping[str, Sequence[Dict[str, Any]]]] = None,
              figures: Sequence[Callable[[Path], Any]] = ()) -> Dict[str, Any]:
    """report.json/.md, the prediction files (``csvs``: ``{file name: rows}``, each written as
    :func:`agglom.eval.predictions.write_predictions_csv` writes; predictions.csv holds the probe protocol's models
    only, every other section its own file), the report's figures and the sections' ``figures``, and the console
    summary; returns the report."""
    from agglom.eval.report.plots import plot_report
    from agglom.eval.sam.report import sam_console

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(out_dir, report)
    for fname, rows in (csvs or {}).items():
        write_predictions_csv(out_dir / fname, list(rows))
    plot_report(json.loads(Path(paths["json"]).read_text()), out_dir)
    for figure in figures:
        figure(out_dir)
    written = json.loads(Path(paths["json"]).read_text())
    print(summary_table(written), flush=True)
    if written.get("zero_shot"):
        print("zero-shot (through the CLIP text tower):\n" + summary_table({"schema": written["schema"],
                                                                          "models": written["zero_shot"]["models"]}),
              flush=True)
    for name, m in ((written.get("dense") or {}).get("models") or {}).items():
        for attr, r in m.get("attributes", {}).items():
            d, wg, gap = r["dice"]["value"], r["worst_group_dice"], r["dice_gap"]["value"]
            print(f"dense {name} / {attr}: Dice {_fmt(d)}, worst group {_fmt(wg['value'])} ({wg.get('group')}), "
                  f"gap {_fmt(gap)}", flush=True)
    for line in sam_console(written.get("sam_prompts") or {}):
        print(line, flush=True)
    print(f"agglom eval: {paths['md']}", flush=True)
    return report


def _fmt(v: Any) -> str:
    return "undefined" if v is None else f"{float(v):.3f}"
