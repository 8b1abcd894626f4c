"""`agglom curate teacher=<card> | run=<dir> [method=kmeans k=2 ...]`: proxy groups from frozen embeddings.

The arguments are :mod:`agglom.config.curate_args`; the work (:mod:`agglom.curate.run`):

Embeds every sample of the chosen split(s) once, optionally drops near-duplicates, clusters into proxy groups,
writes a sidecar (``agglom.sidecar/1``, keyed by sample key) that ``data.sidecars=[<path>]`` turns into
``attrs[<attr>]``, and a report (``curate_report.json`` + ``.md`` beside the sidecar) with cluster sizes, NMI/ARI
against each true attribute, and the removed duplicate keys.
"""
from __future__ import annotations

from typing import Any

from agglom.commands import Command
from agglom.config.curate_args import CurateArgs


def _run(cfg: Any) -> int:
    from agglom.curate.run import run_curate

    report = run_curate(cfg)
    print(report["markdown"], end="")
    return 0


curate = Command(schema=CurateArgs, run=_run,
                 help="proxy groups from frozen embeddings (k-means / per-class / hierarchical) -> sidecar + report",
                 positional="root")
