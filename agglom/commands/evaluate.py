"""`agglom eval run=<run or export dir> [audit=true] [reference=<run>]` and `agglom eval teacher=NAME data_root=DIR`."""
from __future__ import annotations

from agglom.commands import Command
from agglom.config.eval_args import EvalArgs


def _refuse_links(out) -> None:
    """A run folder may come from someone else: a symlink as its ``eval/`` folder or as a file in it would make
    the report overwrite whatever it points to."""
    from agglom.config.load import ConfigError

    links = [p for p in ([out] + (list(out.iterdir()) if out.is_dir() and not out.is_symlink() else []))
             if p.is_symlink()]
    if links:
        raise ConfigError(f"eval: {links[0]} is a symbolic link (to {links[0].readlink()}); agglom does not write "
                          "through links. Remove it, or give out=DIR")


def _run(args: EvalArgs) -> int:
    """One evaluation per output folder at a time (a lock); an earlier report there is replaced, and said so."""
    import time

    from agglom.eval.run import eval_out_dir, run_evaluation
    from agglom.runlock import RunLock

    out = eval_out_dir(args)
    _refuse_links(out)
    with RunLock(out, activity="evaluated"):
        earlier = out / "report.json"
        if earlier.is_file():
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(earlier.stat().st_mtime))
            print(f"agglom eval: replacing the report of {when} in {out} (give out=DIR to keep both)", flush=True)
        run_evaluation(args)
    return 0


evaluate = Command(schema=EvalArgs, run=_run, help="per-group utility + fairness report for a run, export or teacher",
                   positional="run")
