"""`agglom sweep recipe=PATH sweep.lams=[0,1,4] [sweep.key=objective.lam] [sweep.objectives=[excess]] key=value ...`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from agglom.commands import Command
from agglom.config.schema import Recipe


@dataclass
class SweepConfig:
    lams: List[float] = field(default_factory=lambda: [0.0, 1.0, 4.0])  # the values of sweep.key
    key: str = "objective.lam"  # the knob swept: objective.lam | data.group_balance | objective.route_by_audit | ...
    objectives: List[str] = field(default_factory=list)  # default: the recipe's objective.group
    attribute: Optional[str] = None  # the attribute whose gap is traded off (default: groups.by)
    utility: str = "auc"  # headline metric for utility; a dense one (dice, ...) runs the dense probe (eval.dense)
    gap: str = "auc_gap"  # headline metric for the gap (lower is better): auc_gap, ..., or dense: dice_gap, dice_std
    audit: bool = False  # also audit the teachers in each point's report
    levelling_margin: float = 0.0  # a val group AUC fall flags levelling down when its interval is below -margin


@dataclass
class SweepRecipe(Recipe):
    sweep: SweepConfig = field(default_factory=SweepConfig)


def _run(cfg) -> int:
    from agglom.eval.sweep import run_sweep

    run_sweep(cfg)
    return 0


sweep = Command(schema=SweepRecipe, run=_run,
                help="train + eval over a knob's grid; Pareto front, levelling-down check, minimax-Pareto choice")
