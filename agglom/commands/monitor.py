"""`agglom monitor model=<export or .onnx> reference=<dataset> incoming=<folder of dated batches>`: exit 3 on alarm."""
from __future__ import annotations

from agglom.commands import Command
from agglom.config.monitor_args import MonitorArgs


def _run(args: MonitorArgs) -> int:
    from agglom.monitor.run import ALARM_EXIT, alarm_summary, out_dir, run_monitor

    report = run_monitor(args)
    out = out_dir(args)
    alarmed = [(b["batch"], alarm_summary(b["findings"])) for b in report["batches"]]
    alarmed = [(batch, text) for batch, text in alarmed if text]
    print(f"agglom monitor: {len(report['batches'])} batch(es) against {report['reference']['path']} "
          f"({report['reference']['split']}); report: {out / 'report.md'}")
    if alarmed:
        print(f"agglom monitor: ALARM in {len(alarmed)} batch(es): "
              + " | ".join(f"{batch}: {text}" for batch, text in alarmed) + f" (exit {ALARM_EXIT})")
        return ALARM_EXIT
    print("agglom monitor: no alarm")
    return 0


monitor = Command(schema=MonitorArgs, run=_run, positional="model",
                  help="watch an exported model on arriving batches: per-group drift, score and proportion shift, "
                       "AUC; exit 3 on alarm")
