"""The SAM section (``eval.sam_prompts=true``, report key ``sam_prompts``): prompted segmentation through each
SAM-family teacher's own decoder on the teacher's embedding and on the student's adapter output
(:mod:`agglom.eval.sam.run`; schema check, Markdown and console lines :mod:`agglom.eval.sam.report`); per-sample
numbers in ``sam_predictions.csv``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.sam.report import check_sam_section, sam_console, sam_markdown
from agglom.eval.section import EvalContext, raise_problems

__all__ = ["SamSection"]


class SamSection:
    """Planned before any work (a student, a SAM teacher with its decoder, test masks); runs when planned."""

    name = "sam"
    keys = ("sam_prompts",)

    def prepare(self, ctx: EvalContext) -> None:
        if ctx.args.eval.sam_prompts:
            from agglom.eval.sam.run import plan_sam

            ctx.plans[self.name] = plan_sam(ctx.args, ctx.cfg, ctx.model, ctx.device, ctx.datasheet)

    def enabled(self, ctx: EvalContext) -> bool:
        return ctx.plans.get(self.name) is not None

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        from agglom.eval.sam.run import run_sam

        section, rows = run_sam(ctx, ctx.plans[self.name])
        if rows:
            ctx.csvs["sam_predictions.csv"] = rows
        return {"sam_prompts": section}

    def check(self, part: Mapping[str, Any]) -> None:
        problems: List[str] = []
        if part.get("sam_prompts") is not None:
            check_sam_section(part["sam_prompts"], problems)
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return sam_markdown(part["sam_prompts"]) if part.get("sam_prompts") else []

    def console(self, part: Mapping[str, Any]) -> List[str]:
        return sam_console(part.get("sam_prompts") or {})
