"""`agglom eval run=<run or export dir> [audit=true] [reference=<run>]` and `agglom eval teacher=NAME data_root=DIR`."""
from __future__ import annotations

from agglom.commands import Command
from agglom.eval.run import EvalArgs


def _run(args: EvalArgs) -> int:
    from agglom.eval.run import run_evaluation

    run_evaluation(args)
    return 0


evaluate = Command(schema=EvalArgs, run=_run, help="per-group utility + fairness report for a run, export or teacher",
                   positional="run")
