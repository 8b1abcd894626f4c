"""The classification section (the report's ``models``: the linear-probe protocol on every evaluated model,
:mod:`agglom.eval.classification.protocol`) and the comparison section (``comparison``: paired per-group deltas of
the primary model against a reference evaluation, :mod:`agglom.eval.classification.compare`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping

from agglom.eval.checks import check_binary
from agglom.eval.classification.markdown import comparison_markdown, model_markdown
from agglom.eval.md_format import summary_table
from agglom.eval.section import EvalContext, raise_problems

__all__ = ["ClassificationSection", "ComparisonSection"]


class ClassificationSection:
    """Every model's probe: per-group utility and fairness on test, validation headlines, label efficiency; its rows
    are ``predictions.csv`` and its calibration curves ``calibration_<model>_<attribute>.png``. Always runs."""

    name = "classification"
    keys = ("primary", "models")

    def prepare(self, ctx: EvalContext) -> None:
        pass

    def enabled(self, ctx: EvalContext) -> bool:
        return True

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        from agglom.eval.classification.protocol import probe_model

        g = ctx.grouping
        results = {name: probe_model(name, ctx.kind(name), splits, ctx.args.eval, ctx.attr_names, seed=ctx.args.seed,
                                     indexer=g["indexer"], specs=g["specs"], exclude_unknown=g["exclude_unknown"],
                                     label_names=g["label_names"])
                   for name, splits in ctx.splits_of.items()}
        ctx.shared[self.name] = results  # the comparison reads the primary's scores
        ctx.csvs["predictions.csv"] = [{"model": n, **row} for n, r in results.items() for row in r["rows"]]
        ctx.figures.append(lambda out: calibration_plots(results, out))
        return {"primary": ctx.primary, "models": {n: r["section"] for n, r in results.items()}}

    def check(self, part: Mapping[str, Any]) -> None:
        """Each model's attribute results (binary, or multi-label with a macro summary) and label efficiency (that
        ``models`` is a non-empty dict holding ``primary`` is the report's own check)."""
        problems: List[str] = []
        models = part.get("models")
        for name, m in (models.items() if isinstance(models, Mapping) else ()):
            if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping):
                problems.append(f"models.{name}.attributes: expected a dict")
                continue
            for attr, r in m["attributes"].items():
                where = f"models.{name}.attributes.{attr}"
                if isinstance(r, Mapping) and "labels" in r:
                    if "macro" not in r:
                        problems.append(f"{where}: multi-label result without 'macro'")
                    for lab, rr in r["labels"].items():
                        check_binary(rr, f"{where}.labels.{lab}", problems)
                else:
                    check_binary(r, where, problems)
            le = m.get("label_efficiency")
            if le is not None and not (isinstance(le, Mapping) and isinstance(le.get("fractions"), Mapping)):
                problems.append(f"models.{name}.label_efficiency: expected {{'fractions': ...}}")
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        """One section per model, the primary first."""
        models = part.get("models") or {}
        order = [part.get("primary")] + [m for m in models if m != part.get("primary")]
        L: List[str] = []
        for name in [m for m in order if m in models]:
            L += model_markdown(name, models[name])
        return L

    def console(self, part: Mapping[str, Any]) -> List[str]:
        """The summary table: one row per model x attribute."""
        return [summary_table([{"models": part.get("models") or {}}])]


def calibration_plots(results: Mapping[str, Mapping[str, Any]], out_dir: Path) -> None:
    """``calibration_<model>_<attribute>[_<label>].png`` for every probed model (they need the raw scores)."""
    from agglom.eval.report.plots import plot_calibration

    for n, r in results.items():
        y, sc = r["labels"], r["scores"]
        per_label = [(None, y, sc)] if y.ndim == 1 else [(lab, y[:, j], sc[:, j]) for j, lab in
                                                           enumerate(r["label_names"])]
        for lab, yy, ss in per_label:
            for attr, g in r["groups"].items():
                stem = f"calibration_{n}_{attr}" + (f"_{lab}" if lab else "")
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
                plot_calibration(yy, ss, g, out_dir / f"{safe}.png", title=f"{n}: {attr}" + (f" / {lab}" if lab else ""))


class ComparisonSection:
    """``reference=<run or eval dir>``: the primary model's test predictions against the reference's primary, paired
    on the same samples, with the levelling-down flag."""

    name = "comparison"
    keys = ("comparison",)

    def prepare(self, ctx: EvalContext) -> None:
        pass  # the reference is read after the probe (its predictions.csv)

    def enabled(self, ctx: EvalContext) -> bool:
        return bool(ctx.args.reference) and ctx.model is not None

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        from agglom.eval.classification.protocol import reference_comparison

        a = ctx.args
        return {"comparison": reference_comparison(Path(a.reference), ctx.primary,
                                                   ctx.shared["classification"][ctx.primary], a.eval.bootstrap,
                                                   a.seed, ctx.grouping["exclude_unknown"])}

    def check(self, part: Mapping[str, Any]) -> None:
        comp = part.get("comparison")
        if comp is not None and not (isinstance(comp, Mapping) and "attributes" in comp and "levels_down" in comp):
            raise_problems(["comparison: expected a compare_predictions dict"])

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return comparison_markdown(part["comparison"]) if part.get("comparison") else []

    def console(self, part: Mapping[str, Any]) -> List[str]:
        return []
