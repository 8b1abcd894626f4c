"""Writing an evaluation: ``report.json`` (validated, NaN -> null) and ``report.md``, the prediction files the
sections added, the figures, and each section's console lines."""
from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from agglom.eval.metrics import nan_to_none
from agglom.eval.predictions import write_predictions_csv
from agglom.eval.report.markdown import render_markdown
from agglom.eval.report.schema import SCHEMA, validate_report
from agglom.eval.section import part_of
from agglom.eval.sections import in_report_order

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
    only, every other section its own file), the report's figures and the sections' ``figures``, and each section's
    console lines (in report order); returns the report."""
    from agglom.eval.report.plots import plot_report

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = write_report(out_dir, report)
    for fname, rows in (csvs or {}).items():
        write_predictions_csv(out_dir / fname, list(rows))
    plot_report(json.loads(Path(paths["json"]).read_text()), out_dir)
    for figure in figures:
        figure(out_dir)
    written = json.loads(Path(paths["json"]).read_text())
    for section in in_report_order():  # each section's console lines, in report order
        for line in section.console(part_of(section, written)):
            print(line, flush=True)
    print(f"agglom eval: {paths['md']}", flush=True)
    return report
