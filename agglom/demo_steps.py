"""What the demos share (``python -m agglom.demo``, its real-teacher mode in agglom/demo_real.py, and the ablation in
agglom/ablation.py): the fine-tuned teachers' recipe, the tiny random cards, the student's shape, and how a demo
runs agglom commands, side by side or one after another, reusing what a finished run already wrote."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from agglom.cli import main as cli
from agglom.config.load import ConfigError, load_config

STUDENT = "{patch_size: 8, embed_dim: 96, depth: 4, num_heads: 3, dynamic_img_size: true}"
FT_MODEL = "{patch_size: 8, embed_dim: 64, depth: 2, num_heads: 2}"
#: the two fine-tuned teachers: a general one (the rare site down-weighted) and a fairness-tuned one
FT_TEACHERS = {"ft-general": ["data.group_weights={B: 0.1}"], "ft-fair": ["data.group_balanced=true"]}
TINY = ["tiny-clip", "tiny-dinov2", "tiny-sam"]


def eval_report(run: Path) -> Optional[Dict[str, Any]]:
    """The run's ``eval/report.json`` (:func:`agglom.runs.eval_report`, imported late: ``--help`` loads no torch)."""
    from agglom.runs import eval_report as read

    return read(run)


def repo_recipe(name: str) -> Path:
    """``recipes/<name>`` of this checkout, wherever the demo is started from."""
    for p in (Path(__file__).resolve().parents[1] / "recipes" / name, Path("recipes") / name):
        if p.is_file():
            return p
    raise ConfigError(f"recipes/{name} not found: run the demo from an editable install of the agglom repository "
                      "(`make install`) or from its root")


def demo_recipe() -> Path:
    """recipes/demo.yaml of this checkout."""
    return repo_recipe("demo.yaml")


def step(title: str) -> float:
    """Print a phase's title; its start time."""
    print(f"\n=== {title}", flush=True)
    return time.perf_counter()


def run_cli(argv: Sequence[str]) -> None:
    """One agglom command in this process; a non-zero exit stops the demo with that command named."""
    code = cli(list(argv))
    if code:
        raise SystemExit(f"agglom demo: `agglom {' '.join(argv[:2])} ...` failed with exit code {code}")


def run_jobs(a: Any, jobs: Sequence[Any]) -> None:
    """Agglom commands (:class:`agglom.parallel_runs.Job`, each after the jobs it waits for): side by side as child
    processes (``a.jobs`` != 1, :mod:`agglom.parallel_runs`), or one after another in this process (``jobs=1``)."""
    from agglom.parallel_runs import in_order, plan, run_all

    if not jobs:
        return
    if a.jobs == 1:
        for job in in_order(jobs):
            run_cli(job.argv)
        return
    run_all(jobs, *plan(a.jobs, len(jobs)))


def finished(run_dir: Path, steps: int) -> bool:
    """A training run that reached ``steps``."""
    p = run_dir / "run.json"
    return p.is_file() and json.loads(p.read_text()).get("step") == steps


def module_main(argv: Optional[Sequence[str]], schema: Any, run: Any, prog: str, usage: str) -> int:
    """A ``python -m agglom.<prog>`` entry: ``--help`` describes ``schema``; otherwise ``run(config)``, a
    ConfigError one line and exit 2 (the demos and the ablation)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(x in ("-h", "--help") for x in argv):
        from agglom.config.load import describe

        print(usage + "\n" + describe(schema))
        return 0
    try:
        run(load_config(schema, argv))
    except ConfigError as e:
        print(f"agglom {prog}: error: {e}", file=sys.stderr)
        return 2
    return 0
