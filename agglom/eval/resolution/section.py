"""The resolution section (``eval.resolutions=[0.5,1,2]``, multiples of the training size): the mode-switch test —
the student's probe and fidelity at each input size, switch flags and the validated range of sizes
(:mod:`agglom.eval.resolution.resolution`, the pass :mod:`agglom.eval.resolution.run`); figure ``resolution.png``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.resolution.resolution import resolution_markdown
from agglom.eval.section import EvalContext, raise_problems

__all__ = ["ResolutionSection"]

_KEYS = ("base", "sizes", "read_at", "fidelity", "probe", "within_tol", "switches", "validated_range", "rule")


class ResolutionSection:
    """Refused before any work without a dynamic-size student; runs when ``eval.resolutions`` is set."""

    name = "resolution"
    keys = ("resolution",)

    def prepare(self, ctx: EvalContext) -> None:
        if ctx.args.eval.resolutions:
            from agglom.eval.resolution.run import check_resolution_eval

            check_resolution_eval(ctx.model, list(ctx.args.eval.resolutions))

    def enabled(self, ctx: EvalContext) -> bool:
        return bool(ctx.args.eval.resolutions)

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        from agglom.eval.resolution.run import resolution_report

        return {"resolution": resolution_report(ctx)}

    def check(self, part: Mapping[str, Any]) -> None:
        """Its keys; every curve (fidelity per teacher x output, probe AUC, worst-group AUC per attribute) one value
        per size; the validated range ``[lo, hi]`` of evaluated sizes or null."""
        sec = part.get("resolution")
        if sec is None:
            return
        if not isinstance(sec, Mapping):
            raise_problems(["resolution: expected a dict"])
        missing = [k for k in _KEYS if k not in sec]
        if missing:
            raise_problems([f"resolution: missing {missing}"])
        problems: List[str] = []
        sizes = sec["sizes"]
        if not (isinstance(sizes, list) and sizes and all(isinstance(s, int) for s in sizes)):
            raise_problems([f"resolution.sizes: expected a non-empty list of px, got {sizes!r}"])
        probe = sec["probe"]
        if not (isinstance(sec["fidelity"], Mapping) and isinstance(probe, Mapping) and "auc" in probe
                and isinstance(probe.get("worst_group_auc"), Mapping)):
            raise_problems(["resolution: expected fidelity {curve: [...]} and probe {'auc', 'worst_group_auc'}"])
        curves = {**{f"fidelity.{k}": v for k, v in sec["fidelity"].items()}, "probe.auc": probe["auc"],
                  **{f"probe.worst_group_auc.{a}": v for a, v in probe["worst_group_auc"].items()}}
        for where, vals in curves.items():
            if not isinstance(vals, list) or len(vals) != len(sizes):
                problems.append(f"resolution.{where}: expected one value per size ({len(sizes)})")
        rng = sec["validated_range"]
        if rng is not None and not (isinstance(rng, list) and len(rng) == 2 and all(r in sizes for r in rng)):
            problems.append(f"resolution.validated_range: expected [lo, hi] of the evaluated sizes or null, got {rng!r}")
        if not isinstance(sec["switches"], list):
            problems.append("resolution.switches: expected a list")
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return resolution_markdown(part["resolution"]) if part.get("resolution") else []

    def console(self, part: Mapping[str, Any]) -> List[str]:
        return []  # the pass prints the sizes and the validated range as it goes (agglom.eval.resolution.run)
