"""The dense section (``eval.dense=true``): a linear 1x1 (or small conv) probe on each model's spatial features
against the samples' segmentation masks, Dice and IoU per group (:mod:`agglom.eval.dense.dense`, the pass
:mod:`agglom.eval.dense.run`); per-sample Dice in ``dense_predictions.csv``, a few test masks in
``dense_overlays.png``."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.dense.markdown import dense_markdown
from agglom.eval.section import EvalContext, raise_problems
from agglom.metrics.values import _check_metric

__all__ = ["DenseSection"]


class DenseSection:
    """Runs when the shared pass kept spatial maps (``eval.dense=true``): masks are read with the features."""

    name = "dense"
    keys = ("dense",)

    def prepare(self, ctx: EvalContext) -> None:
        if ctx.args.eval.dense:
            from agglom.eval.dense.run import check_dense_data

            check_dense_data(ctx.cfg, ctx.datasheet)

    def enabled(self, ctx: EvalContext) -> bool:
        return bool(ctx.spatial)

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        from agglom.eval.dense.run import dense_report

        g = ctx.grouping
        kinds = {n: ctx.kind(n) for n in ctx.splits_of}
        section, rows, overlays = dense_report(ctx.splits_of, kinds, ctx.args.eval, ctx.attr_names, ctx.args.seed,
                                               g["indexer"], g["specs"], g["exclude_unknown"],
                                               overlay_attribute=ctx.cfg.groups.by)
        if rows:
            ctx.csvs["dense_predictions.csv"] = rows
        if any(overlays.values()):
            ctx.figures.append(lambda out: _overlays(overlays, out))
        return {"dense": section}

    def check(self, part: Mapping[str, Any]) -> None:
        """Protocol, and per model and attribute a dice_fairness result with its metrics."""
        dense = part.get("dense")
        if dense is None:
            return
        if not (isinstance(dense, Mapping) and isinstance(dense.get("models"), Mapping) and "protocol" in dense):
            raise_problems(["dense: expected {'protocol', 'masks', 'models'}"])
        problems: List[str] = []
        for name, m in dense["models"].items():
            if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping):
                problems.append(f"dense.models.{name}: expected {{'kind', 'threshold', 'attributes', ...}}")
                continue
            for attr, r in m["attributes"].items():
                where = f"dense.models.{name}.attributes.{attr}"
                if not isinstance(r, Mapping) or "groups" not in r or "group_names" not in r:
                    problems.append(f"{where}: expected a dice_fairness dict")
                    continue
                for k in ("dice", "iou", "worst_group_dice", "dice_gap", "es_dice", "es_dice_std"):
                    _check_metric(r.get(k), f"{where}.{k}", problems)
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return dense_markdown(part["dense"]) if part.get("dense") else []

    def console(self, part: Mapping[str, Any]) -> List[str]:
        """One line per model x attribute: Dice, the worst group, the gap."""
        out = []
        for name, m in ((part.get("dense") or {}).get("models") or {}).items():
            for attr, r in m.get("attributes", {}).items():
                d, wg, gap = r["dice"]["value"], r["worst_group_dice"], r["dice_gap"]["value"]
                out.append(f"dense {name} / {attr}: Dice {_fmt(d)}, worst group {_fmt(wg['value'])} "
                           f"({wg.get('group')}), gap {_fmt(gap)}")
        return out


def _fmt(v: Any) -> str:
    return "undefined" if v is None else f"{float(v):.3f}"


def _overlays(overlays: Mapping[str, Any], out: Any) -> None:
    from agglom.eval.report.plots import plot_dense_overlays

    plot_dense_overlays(overlays, out / "dense_overlays.png")
