"""`python -m benchmarks.patient_coverage [datasets=200] [patients=120] [images=5] [n_boot=200] [rho=0.8] [seed=0]`

Does a 95% interval of the AUC cover the true AUC when every patient contributes several images? Each simulated
test set has ``patients`` patients (a third positive), ``images`` images each; an image's score is the patient's
label effect plus a patient effect shared by all of that patient's images plus image noise, with ``rho`` the share of
the score variance that is the patient's (the intra-class correlation). The true AUC, for images of two different
patients, is ``Phi(mu / sqrt(2))`` with unit total variance. Both intervals come from agglom's one bootstrap
(agglom/metrics/bootstrap.py) with BCa (agglom/metrics/intervals.py): resampling images (as if independent) and
resampling patients. Prints and returns both coverages and the mean widths.
"""
from __future__ import annotations

import json
import sys
from typing import Any, Dict, Sequence

import numpy as np

DEFAULTS: Dict[str, Any] = {"datasets": 200, "patients": 120, "images": 5, "n_boot": 200, "rho": 0.8, "mu": 1.2,
                            "seed": 0}


def _dataset(rng: np.random.Generator, o: Dict[str, Any]) -> Dict[str, np.ndarray]:
    n_p, k = int(o["patients"]), int(o["images"])
    y_p = (np.arange(n_p) % 3 == 0).astype(int)
    u = rng.normal(0, np.sqrt(o["rho"]), n_p)
    pid = np.repeat(np.arange(n_p), k)
    score = o["mu"] * y_p[pid] + u[pid] + rng.normal(0, np.sqrt(1 - o["rho"]), n_p * k)
    return {"y": y_p[pid], "score": score, "patient": pid.astype(str)}


def coverage(opts: Dict[str, Any]) -> Dict[str, Any]:
    """Coverage and mean width of the image-level and the patient-clustered BCa interval of the overall AUC."""
    from scipy.stats import norm

    from agglom.metrics.bootstrap import Resampler, replicate, strata_by
    from agglom.metrics.group_stats import rank_auc
    from agglom.metrics.intervals import bca_interval

    truth = float(norm.cdf(opts["mu"] / np.sqrt(2.0)))
    rng = np.random.default_rng(int(opts["seed"]))
    hits = {"images": 0, "patients": 0}
    width = {"images": 0.0, "patients": 0.0}
    for d in range(int(opts["datasets"])):
        data = _dataset(rng, opts)
        y, s = data["y"], data["score"]
        strata = strata_by(np.zeros(y.size, dtype=int).astype(str), y)
        point = rank_auc(y, s)
        for unit, clusters in (("images", None), ("patients", data["patient"])):
            auc = lambda i, y=y, s=s: rank_auc(y[i], s[i])  # noqa: E731
            r = replicate(auc, Resampler(strata, clusters), int(opts["n_boot"]), d)
            lo, hi, _ = bca_interval(point, r["reps"], r["jack"])
            hits[unit] += int(lo <= truth <= hi)
            width[unit] += (hi - lo) / int(opts["datasets"])
    n = int(opts["datasets"])
    return {"true_auc": truth, "datasets": n, "images_per_patient": int(opts["images"]), "icc": opts["rho"],
            "coverage": {u: hits[u] / n for u in hits}, "mean_width": {u: round(w, 4) for u, w in width.items()},
            "options": opts}


def main(argv: Sequence[str]) -> int:
    from benchmarks.common import parse_options

    res = coverage(parse_options(argv, DEFAULTS, __doc__ or "", "patient_coverage"))
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
