"""Objectives: per-sample × per-teacher losses, teacher and group aggregation (docs/ARCHITECTURE.md)."""
from agglom.objective.groups import (
    GROUP_OBJECTIVES,
    GroupObjective,
    build_group_objective,
    list_group_objectives,
    register_group_objective,
)
from agglom.objective.routing import apply_routing, build_routing
from agglom.objective.tracking import GroupTeacherTracker

__all__ = [
    "GroupObjective",
    "GroupTeacherTracker",
    "apply_routing",
    "build_group_objective",
    "build_routing",
    "GROUP_OBJECTIVES",
    "list_group_objectives",
    "register_group_objective",
]
