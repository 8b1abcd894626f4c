"""The fidelity section: how closely the student's heads reproduce each teacher, per group, from the accumulator
filled on the primary model's test pass (:class:`agglom.eval.fidelity.fidelity.FidelityAccumulator`): ``fidelity``
(global-normalised R², the primary measure), ``fidelity_cosine`` (secondary), ``fidelity_measure`` and
``fidelity_functional`` (each teacher's own probe on the student's adapter output)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from agglom.eval.fidelity.markdown import fidelity_markdown
from agglom.eval.section import EvalContext, raise_problems

__all__ = ["FidelitySection", "fidelity_report"]


class FidelitySection:
    """Runs when the student was evaluated with ``eval.fidelity=true`` and its test pass measured a teacher."""

    name = "fidelity"
    keys = ("fidelity", "fidelity_cosine", "fidelity_measure", "fidelity_functional")

    def prepare(self, ctx: EvalContext) -> None:
        pass  # the accumulator rides on the shared pass (agglom.eval.run)

    def enabled(self, ctx: EvalContext) -> bool:
        return ctx.fidelity is not None and bool(ctx.fidelity.sq_err)

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        import torch

        g = ctx.grouping
        with torch.no_grad():
            return fidelity_report(ctx.cfg, ctx.fidelity, ctx.splits_of, ctx.args, ctx.device, ctx.attr_names,
                                   g["indexer"], g["specs"], g["exclude_unknown"])

    def check(self, part: Mapping[str, Any]) -> None:
        problems: List[str] = []
        for key in ("fidelity", "fidelity_cosine"):
            fid = part.get(key)
            if fid is None:
                continue
            if not isinstance(fid, Mapping):
                problems.append(f"{key}: expected a dict")
                continue
            for attr, per in fid.items():
                for t, s in per.items():
                    if not isinstance(s, Mapping) or "by_group" not in s or "gap" not in s:
                        problems.append(f"{key}.{attr}.{t}: expected a group_mean_summary dict")
        raise_problems(problems)

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        return fidelity_markdown(part)

    def console(self, part: Mapping[str, Any]) -> List[str]:
        return []


def fidelity_report(cfg: Any, fid: Any, splits_of: Dict[str, Dict[str, Any]], args: Any,
                    device: Any, attr_names: Optional[List[str]], indexer: Any, specs: Sequence[str],
                    exclude_unknown: bool) -> Dict[str, Any]:
    """The report's fidelity sections from the accumulator filled on the primary model's test pass:
    ``fidelity`` (global-normalised R², the primary measure), ``fidelity_cosine`` (secondary) and
    ``fidelity_functional`` (each teacher's own probe on the student's adapter output)."""
    from agglom.data.patients import patient_ids
    from agglom.data.readers import eval_loader
    from agglom.eval.extract import attribute_groups, extract_all, teacher_encoder
    from agglom.eval.fidelity.fidelity import fidelity_summaries, functional_fidelity

    primary = next(n for n, sp in splits_of.items() if not n.startswith("teacher:"))
    tr, te = splits_of[primary]["train"], splits_of[primary]["test"]
    groups = attribute_groups(te.attrs, attr_names or None, reference=tr.attrs, indexer=indexer, specs=specs)
    per = fidelity_summaries(fid.result(), groups, n_boot=int(args.eval.bootstrap), seed=args.seed,
                             exclude_unknown=exclude_unknown, patients=patient_ids(te.attrs))
    out: Dict[str, Any] = {"fidelity": per["r2"], "fidelity_cosine": per["cosine"],
                           "fidelity_measure": "r2_global: 1 - squared error / per-channel variance of the teacher's "
                                               "features over the whole test split (one normaliser for all groups)"}
    if te.labels.ndim != 1 or len(set(te.labels.tolist()) - {0, 1}):
        return out  # functional fidelity: binary labels only
    summaries = fid.summary_features()
    reuse = args.eval.features != "pooled"  # the audit probed the teachers' summaries: the same features
    need = {n: teacher_encoder(fid.teachers[n], "summary") for n in summaries
            if not (reuse and f"teacher:{n}" in splits_of)}  # cached teachers are read by key
    extra = {}
    if need:  # one pass over train and val for every teacher the audit did not cover
        extra = {split: extract_all(eval_loader(cfg, split, batch_size=args.batch_size), need, device, desc=split)
                 for split in (cfg.data.train_split, cfg.data.val_split)}
    functional = {}
    for name, feats in summaries.items():
        if name in need:
            t_tr, t_va = extra[cfg.data.train_split][name], extra[cfg.data.val_split][name]
        else:
            t_tr, t_va = splits_of[f"teacher:{name}"]["train"], splits_of[f"teacher:{name}"]["val"]
        functional[name] = functional_fidelity(t_tr.features, t_tr.labels, t_va.features, t_va.labels,
                                               feats["teacher"], feats["student"], te.labels, groups,
                                               C=args.eval.probe_c, max_iter=args.eval.max_iter,
                                               threshold_method=args.eval.threshold_method, seed=args.seed,
                                               n_boot=int(args.eval.bootstrap), exclude_unknown=exclude_unknown)
    out["fidelity_functional"] = functional
    return out
