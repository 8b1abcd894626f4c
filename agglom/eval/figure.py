"""matplotlib on the Agg backend (no display needed) and how a report figure is written: the base of
:mod:`agglom.eval.report.plots` and of the sections that draw their own figure (:mod:`agglom.eval.resolution.resolution`)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend


def _save(fig: Any, path: str | os.PathLike, crop: bool = False) -> str:
    """Lay out and write one PNG. tight_layout fits the subplots' labels (every legend sits inside its axes);
    dropping the layout engine it leaves behind spares savefig a second full draw. ``crop`` (bbox_inches="tight",
    one more draw) is for what tight_layout does not place: a colorbar's label, a suptitle wider than the grid, annotations past the axes."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.set_layout_engine(None)
    fig.savefig(p, dpi=110, bbox_inches="tight" if crop else None)
    plt.close(fig)
    return str(p)


__all__ = ["plt"]
