"""Fidelity of the student's adapters to each teacher, per teacher × output × sample, measured so groups compare.

Three measures (docs/metrics.md, "Distillation measures"):

* ``r2`` — the primary one: 1 − normalised squared error against *one* set of statistics for all groups. The
  student's prediction is taken back to the teacher's own feature space (its normaliser inverted) and compared
  with the teacher's raw features; each channel's squared error is divided by that channel's variance over the
  whole evaluation split (all groups together, never per group, never the training stream's running statistics).
  Per sample: ``1 − mean_c (pred_c − target_c)² / σ²_c`` (spatial outputs: averaged over tokens, σ² over every
  token of the split; σ²_c floored at 1% of the mean channel variance, so near-constant channels do not dominate). The mean over a group is the R² of that group against the teacher's overall variance, so
  the same absolute error counts the same in every group: a group whose features sit far from the mean (a large
  norm) is not rewarded for it. 1 is perfect, 0 is as good as predicting the teacher's mean, and it can be
  negative.
* ``cosine`` — secondary, kept for comparison with RADIO-style reports: cosine between the prediction and the
  target in the *training normaliser's* space. Biased: it rewards samples far from the normaliser's running mean
  (a rare group gets 0.99 on a summary while the same teacher's spatial output gets 0.79), and it moves when the
  sampling moves that mean.
* functional (:func:`functional_fidelity`): the teacher's own linear probe applied to the student's adapter output
  for that teacher: per-group AUC of the two and the fraction of samples on which their decisions agree.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

MEASURES = ("r2", "cosine")


class FidelityAccumulator:
    """Streams the test split once: the student's predictions and each teacher's features, per sample.

    Memory is ``O(N × C)`` per teacher output (per-sample, per-channel squared errors; spatial maps are reduced over
    tokens as they arrive), plus the summary features themselves for the functional measure.
    """

    def __init__(self, model: Any, teachers: Mapping[str, Any]) -> None:
        self.model, self.teachers = model, dict(teachers)
        self.sq_err: Dict[str, List[np.ndarray]] = {}  # key -> [B, C] per-channel squared error (token mean)
        self.cosine: Dict[str, List[np.ndarray]] = {}
        self.moments: Dict[str, List[torch.Tensor]] = {}  # key -> [count, sum [C], sum of squares [C]] (float64)
        self.summaries: Dict[str, Dict[str, List[np.ndarray]]] = {}  # teacher -> {"teacher", "student"} [B, D]
        self.keys: List[str] = []  # the samples seen, in order: results come back sorted by key (see _order)

    def _moments(self, key: str, tokens: torch.Tensor) -> None:
        t = tokens.double()
        m = self.moments.setdefault(key, [torch.zeros((), dtype=torch.float64), torch.zeros(t.shape[-1], dtype=torch.float64),
                                          torch.zeros(t.shape[-1], dtype=torch.float64)])
        m[0] += t.shape[0]
        m[1] += t.sum(0).cpu()
        m[2] += (t * t).sum(0).cpu()

    @torch.no_grad()
    def update(self, x: torch.Tensor, keys: Optional[Sequence[str]] = None) -> None:
        from agglom.cache.reader import teacher_output

        self.keys += [str(k) for k in (keys or [])]
        preds = self.model(x)
        for name, teacher in self.teachers.items():
            if name not in preds:
                continue
            o = teacher_output(teacher, x, keys or [])
            raw = {"summary": o.summary.float(), "spatial": o.spatial.float()}
            grid = tuple(preds[name]["spatial"].shape[-2:]) if "spatial" in preds[name] else None
            if grid is not None and tuple(raw["spatial"].shape[-2:]) != grid:
                # a student trained from a pooled feature cache predicts the pooled grid: compare it with the
                # teacher's map pooled the same way (mean over each cell), the target it learnt
                raw["spatial"] = F.adaptive_avg_pool2d(raw["spatial"], grid)
            target_n = self.model.normalise_targets(name, raw["summary"].clone(), raw["spatial"].clone(), update=False)
            pred_raw = self.model.denormalise(name, preds[name])
            for out in ("summary", "spatial"):
                if out not in preds[name] or out not in target_n:
                    continue
                key = f"{name}/{out}"
                p_n, t_n = preds[name][out].float(), target_n[out]
                p, t = pred_raw[out], raw[out]
                if out == "summary":
                    cos = F.cosine_similarity(p_n, t_n, dim=-1)
                    err = (p - t) ** 2
                    self._moments(key, t)
                    s = self.summaries.setdefault(name, {"teacher": [], "student": []})
                    s["teacher"].append(t.cpu().numpy())
                    s["student"].append(p.cpu().numpy())
                else:
                    cos = F.cosine_similarity(p_n, t_n, dim=1).flatten(1).mean(1)
                    err = ((p - t) ** 2).flatten(2).mean(-1)  # [B, C]
                    self._moments(key, t.flatten(2).transpose(1, 2).reshape(-1, t.shape[1]))
                self.cosine.setdefault(key, []).append(cos.cpu().numpy())
                self.sq_err.setdefault(key, []).append(err.double().cpu().numpy())

    def result(self) -> Dict[str, Dict[str, np.ndarray]]:
        """``{measure: {"<teacher>/<output>": [N] per-sample values}}`` for ``measure`` in :data:`MEASURES`."""
        r2: Dict[str, np.ndarray] = {}
        for key, chunks in self.sq_err.items():
            n, s, ss = self.moments[key]
            var = (ss / n - (s / n) ** 2).clamp_min(0).numpy()
            r2[key] = global_r2(np.concatenate(chunks), var)[self._order()]
        return {"r2": r2, "cosine": {k: np.concatenate(v)[self._order()] for k, v in self.cosine.items()}}

    def _order(self) -> Any:
        """Sample order of the results: sorted by key, as :func:`agglom.eval.extract.extract_all` sorts the split
        (how many loader workers read it must not change the bootstrap's draws); as seen when keys were not given."""
        return np.argsort(np.asarray(self.keys), kind="stable") if self.keys else slice(None)

    def summary_features(self) -> Dict[str, Dict[str, np.ndarray]]:
        """``{teacher: {"teacher": [N, D], "student": [N, D]}}``: raw teacher summaries and the student's adapter
        output for them (teacher space), sorted by sample key like the split's features."""
        return {n: {k: np.concatenate(v)[self._order()] for k, v in d.items()} for n, d in self.summaries.items()}


def global_r2(sq_err: np.ndarray, var: np.ndarray, floor: float = 1e-2) -> np.ndarray:
    """Per-sample ``1 − mean_c sq_err[:, c] / var[c]`` with one variance per channel for every sample.

    A channel's variance is floored at ``floor`` × the mean channel variance: a (nearly) constant channel carries
    no information, and dividing by its variance would let numerical noise decide the measure."""
    sq_err, var = np.asarray(sq_err, dtype=np.float64), np.asarray(var, dtype=np.float64)
    mean_var = float(var.mean()) if var.size else 0.0
    if not mean_var > 0:
        return np.full(sq_err.shape[0], np.nan)
    return 1.0 - (sq_err / np.maximum(var, floor * mean_var)).mean(1)


def functional_fidelity(teacher_train: np.ndarray, y_train: np.ndarray, teacher_val: np.ndarray, y_val: np.ndarray,
                        teacher_test: np.ndarray, student_test: np.ndarray, y_test: np.ndarray,
                        groups: Mapping[str, np.ndarray], *, C: float = 1.0, max_iter: int = 1000,
                        threshold_method: str = "youden", seed: int = 0, n_boot: int = 0,
                        exclude_unknown: bool = True) -> Dict[str, Any]:
    """The teacher's own probe (fitted on its train features, threshold on val) scoring the teacher's and the
    student's test features. Returns, per attribute, group AUCs of both, their difference and the agreement of
    the two decisions (a :func:`~agglom.eval.metrics.group_mean_summary` of per-sample 0/1 agreement)."""
    from agglom.eval.metrics import group_mean_summary
    from agglom.metrics.group_stats import rank_auc
    from agglom.metrics.probe import fit_linear_probe

    ytr, yva, yte = (np.asarray(v).reshape(-1).astype(int) for v in (y_train, y_val, y_test))
    both = np.concatenate([teacher_test, student_test])
    probe = fit_linear_probe(teacher_train, ytr, teacher_val, yva, both, C=C, max_iter=max_iter,
                             threshold_method=threshold_method, seed=seed)
    n = len(teacher_test)
    s_teacher, s_student = probe.test_scores[:n], probe.test_scores[n:]
    t = probe.threshold(f"val_{threshold_method}")
    agree = ((s_teacher >= t) == (s_student >= t)).astype(float)
    out: Dict[str, Any] = {"threshold": float(t), "attributes": {}}
    def auc(score: np.ndarray, m: np.ndarray) -> Optional[float]:
        v = rank_auc(yte[m], score[m])
        return float(v) if np.isfinite(v) else None

    for attr, g in groups.items():
        g = np.asarray(g).astype(str)
        names = sorted(set(g.tolist()) - {"unknown"}) + (["unknown"] if "unknown" in set(g.tolist()) else [])
        parity = [n for n in names if not (exclude_unknown and n == "unknown")]
        by_group = {}
        for name in names:
            m = g == name
            a, b = auc(s_teacher, m), auc(s_student, m)
            by_group[name] = {"teacher_auc": a, "student_auc": b, "delta_auc": None if a is None or b is None else b - a,
                              "n": int(m.sum())}

        def worst(k: str, by_group: Dict[str, Any] = by_group, parity: List[str] = parity) -> Optional[float]:
            vals = [by_group[n][k] for n in parity if by_group[n][k] is not None]
            return min(vals) if vals else None

        every = np.ones(len(g), dtype=bool)
        out["attributes"][attr] = {
            "teacher_auc": auc(s_teacher, every), "student_auc": auc(s_student, every),
            "teacher_worst_group_auc": worst("teacher_auc"), "student_worst_group_auc": worst("student_auc"),
            "by_group": by_group,
            "agreement": group_mean_summary(agree, g, higher_is_better=True, exclude_unknown=exclude_unknown,
                                            n_boot=n_boot, seed=seed),
        }
    return out


def fidelity_summaries(per_sample: Mapping[str, Mapping[str, np.ndarray]], groups: Mapping[str, np.ndarray],
                       n_boot: int = 0, seed: int = 0, exclude_unknown: bool = True,
                       measures: Sequence[str] = MEASURES,
                       patients: Any = None) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{measure: {attribute: {"<teacher>/<output>": group_mean_summary}}}`` from :meth:`FidelityAccumulator.result`
    (intervals over patients when ``patients`` gives an id per test sample)."""
    from agglom.eval.metrics import group_mean_summary

    return {m: {attr: {k: group_mean_summary(v, g, higher_is_better=True, exclude_unknown=exclude_unknown,
                                             n_boot=n_boot, seed=seed, patients=patients)
                       for k, v in per_sample.get(m, {}).items()}
                for attr, g in groups.items()}
            for m in measures}


def fidelity_headline(section: Mapping[str, Mapping[str, Any]], clip: bool = True) -> Optional[Dict[str, Any]]:
    """Mean fidelity over teacher outputs, and the worst and mean per-output group gap, for one attribute's
    ``{"<teacher>/<output>": group_mean_summary}``; None when empty.

    With ``clip`` (the default for R²) every group's value is first clipped to [0, 1]: "worse than predicting the
    teacher's mean" counts as no fidelity, so one badly reproduced teacher output (R² far below 0, as a random tiny
    teacher's summary of variance 1e-9 had while the z-score floor was absolute) cannot swamp the average."""
    def c(v: float) -> float:
        return min(1.0, max(0.0, v)) if clip else v

    overall, gaps = [], {}
    for k, s in section.items():
        if s["overall"]["value"] is None:
            continue
        overall.append(c(s["overall"]["value"]))
        vals = [c(g["value"]) for n, g in s["by_group"].items()
                if g["value"] is not None and n not in s.get("excluded_from_gaps", [])]
        if len(vals) >= 2:
            gaps[k] = max(vals) - min(vals)
    if not overall:
        return None
    worst = max(gaps, key=gaps.get) if gaps else None
    return {"mean": float(np.mean(overall)), "worst_gap": gaps.get(worst) if worst else None, "worst_gap_output": worst,
            "mean_gap": float(np.mean(list(gaps.values()))) if gaps else None, "clipped": clip}


__all__ = ["MEASURES", "FidelityAccumulator", "global_r2", "functional_fidelity", "fidelity_summaries",
           "fidelity_headline"]
