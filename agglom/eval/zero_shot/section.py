"""The zero-shot section (``zero_shot=recipe|FILE``): classification through each CLIP-family teacher's text tower,
the student through its adapter for that teacher and each audited teacher through its own embedding, with the
probe's per-group metrics (:mod:`agglom.eval.zero_shot.zero_shot`, the pass :mod:`agglom.eval.zero_shot.run`);
per-sample scores in ``zero_shot_predictions.csv``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.checks import check_binary
from agglom.eval.md_format import summary_table
from agglom.eval.section import EvalContext, raise_problems
from agglom.eval.zero_shot.markdown import zero_shot_markdown

__all__ = ["ZeroShotSection"]


class ZeroShotSection:
    """Planned before any work (prompts, teachers with a usable text tower); runs when planned."""

    name = "zero_shot"
    keys = ("zero_shot",)

    def prepare(self, ctx: EvalContext) -> None:
        if ctx.args.zero_shot:
            from agglom.eval.zero_shot.run import plan_zero_shot

            ctx.plans[self.name] = plan_zero_shot(ctx.args, ctx.cfg, ctx.model, ctx.audit_names, ctx.label_info)

    def enabled(self, ctx: EvalContext) -> bool:
        return ctx.plans.get(self.name) is not None

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        import torch

        from agglom.eval.zero_shot.run import run_zero_shot

        with torch.no_grad():
            section, rows = run_zero_shot(ctx, ctx.plans[self.name])
        if rows:
            ctx.csvs["zero_shot_predictions.csv"] = rows
        return {"zero_shot": section}

    def check(self, part: Mapping[str, Any]) -> None:
        """Prompts, and per model the teacher it went through and its attribute results."""
        zs = part.get("zero_shot")
        if zs is None:
            return
        if not (isinstance(zs, Mapping) and isinstance(zs.get("models"), Mapping) and "prompts" in zs):
            raise_problems(["zero_shot: expected {'prompts', 'scoring', 'models'}"])
        problems: List[str] = []
        for name, m in zs["models"].items():
            if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping) or "via" not in m:
                problems.append(f"zero_shot.models.{name}: expected {{'kind', 'via', 'attributes', ...}}")
                continue
            for attr, r in m["attributes"].items():
                where = f"zero_shot.models.{name}.attributes.{attr}"
                if isinstance(r, Mapping) and "labels" in r:
                    for lab, rr in r["labels"].items():
                        check_binary(rr, f"{where}.labels.{lab}", problems)
                else:
                    check_binary(r, where, problems)
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return zero_shot_markdown(part["zero_shot"]) if part.get("zero_shot") else []

    def console(self, part: Mapping[str, Any]) -> List[str]:
        """The summary table of the zero-shot models."""
        if not part.get("zero_shot"):
            return []
        return ["zero-shot (through the CLIP text tower):\n" + summary_table([{"models": part["zero_shot"]["models"]}])]
