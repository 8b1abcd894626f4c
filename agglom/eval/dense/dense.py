"""Dense (segmentation) evaluation: a linear 1x1 probe on spatial features, Dice/IoU per sample, and FairMedFM's
segmentation fairness metrics across groups with BCa bootstrap intervals.

Protocol (the classification probe's, made dense). For each model (the student's patch tokens, each teacher's
spatial map): features on train/val/test with the masks of the same samples (the reader's geometry: masks at the
student's input size, nearest-neighbour resized). A 1x1 convolution (one linear map per feature vector, channels
standardised with the train split's statistics) is fitted on the train split's masked samples; its logits are
upsampled bilinearly to the mask's size and trained with pixel BCE + a batch soft-Dice term (the foreground is a few
percent of the pixels). The foreground threshold is the one of a fixed grid with the best mean Dice on the
validation split, and test Dice / IoU are reported at it. Label maps are evaluated as foreground (any label > 0)
vs background.

Which samples count. Dice is reported over test samples whose mask has foreground (as in FairMedFM, whose datasets
always have some): a sample with an empty mask has no overlap to measure. Those samples are counted apart, with
the share in which the probe marks any pixel (``empty_with_prediction``). Pixels marked
:data:`~agglom.data.masks.IGNORE` count nowhere; a sample without a mask is not evaluated.

Fairness (docs/metrics.md; "gap" = lower is better, "score" = higher is better), over the groups of each attribute:
mean Dice and IoU per group, worst and best group, the Dice gap (max - min), the standard deviation and skewness of
the group Dices (skewness: undefined for fewer than 3 groups), and both equity-scaled forms: FairMedFM's ``es_dice_std`` = Dice / (1 + std of group Dices) and
FairSeg's ``es_dice`` = Dice / (1 + sum_g |Dice - Dice_g|), Dice being the mean over all evaluated samples.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from agglom.data.masks import IGNORE
from agglom.eval.metrics import UNKNOWN, _group_order, _m

THRESHOLDS = np.round(np.linspace(0.05, 0.95, 19), 4)  # the validation grid of foreground thresholds
STAT_KEYS = ("dice", "iou", "worst_group_dice", "best_group_dice", "dice_gap", "dice_std", "dice_skewness",
             "es_dice", "es_dice_std")
PROTOCOL = ("linear 1x1 probe on spatial features (channels standardised on train), logits upsampled bilinearly to "
            "the mask size, pixel BCE + batch soft Dice, Adam; foreground threshold of the grid 0.05..0.95 with the "
            "best mean validation Dice; Dice/IoU over test samples with foreground (label maps: any label > 0)")


# --------------------------------------------------------------------------- per-sample overlap
def dice_iou(pred: np.ndarray, truth: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-sample Dice and IoU of boolean predictions [N, H, W] against label maps [N, H, W] (foreground: > 0;
    :data:`IGNORE` pixels left out). A sample with neither predicted nor true foreground scores 1 (agreement on
    nothing); one with only one of them scores 0."""
    pred = np.asarray(pred, dtype=bool)
    truth = np.asarray(truth)
    valid = truth != IGNORE
    p = pred & valid
    t = (truth > 0) & valid
    inter = (p & t).reshape(len(p), -1).sum(1).astype(np.float64)
    ps = p.reshape(len(p), -1).sum(1).astype(np.float64)
    ts = t.reshape(len(t), -1).sum(1).astype(np.float64)
    union = ps + ts - inter
    empty = (ps + ts) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, ps + ts))
        iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


# --------------------------------------------------------------------------- fairness across groups
def _skewness(x: np.ndarray) -> float:
    """Population skewness (the third standardised moment; scipy's ``skew(bias=True)``); NaN when all equal and for
    fewer than 3 groups (two values always have skewness 0, which would read as "symmetric")."""
    x = np.asarray(x, dtype=float)
    if x.size < 3:
        return float("nan")
    d = x - x.mean()
    s = math.sqrt(float(np.mean(d * d)))
    return float(np.mean(d ** 3) / s ** 3) if s > 1e-12 else float("nan")


def dice_stats(dice: np.ndarray, iou: np.ndarray, g: np.ndarray, names: Sequence[str],
               included: Sequence[str]) -> Dict[str, float]:
    """The point statistics of one sample set: overall Dice/IoU, each group's mean Dice/IoU (``dice:<g>``,
    ``iou:<g>``) and the across-group statistics over the ``included`` groups (see the module docstring)."""
    out: Dict[str, float] = {"dice": float(dice.mean()) if dice.size else float("nan"),
                             "iou": float(iou.mean()) if iou.size else float("nan")}
    for n in names:
        sel = g == n
        out[f"dice:{n}"] = float(dice[sel].mean()) if sel.any() else float("nan")
        out[f"iou:{n}"] = float(iou[sel].mean()) if sel.any() else float("nan")
    gd = np.asarray([out[f"dice:{n}"] for n in included], dtype=float)
    gd = gd[np.isfinite(gd)]
    if gd.size:
        out["worst_group_dice"], out["best_group_dice"] = float(gd.min()), float(gd.max())
        out["dice_gap"] = float(gd.max() - gd.min())
        out["dice_std"] = float(gd.std())
        out["dice_skewness"] = _skewness(gd)
        out["es_dice"] = out["dice"] / (1.0 + float(np.abs(out["dice"] - gd).sum()))
        out["es_dice_std"] = out["dice"] / (1.0 + out["dice_std"])
    else:
        for k in STAT_KEYS[2:]:
            out[k] = float("nan")
    return out


def dice_fairness(dice: Any, iou: Any, groups: Any, *, exclude_unknown: bool = True, n_boot: int = 200,
                  seed: int = 0, ci: float = 0.95, patients: Any = None) -> Dict[str, Any]:
    """One attribute's dense result: ``{"n", "group_names", "excluded_from_gaps", <STAT_KEYS>: {"value", "ci"},
    "groups": {g: {"n", "dice", "iou"}}}``. Intervals: bootstrap resampling within each group (the group sizes
    fixed, as for the classification metrics; patients rather than images when ``patients`` names them), BCa with a
    grouped jackknife (:mod:`agglom.metrics.bootstrap`)."""
    dice = np.asarray(dice, dtype=float).reshape(-1)
    iou = np.asarray(iou, dtype=float).reshape(-1)
    g = np.asarray(groups).astype(str).reshape(-1)
    if not (dice.shape == iou.shape == g.shape):
        raise ValueError(f"dice {dice.shape}, iou {iou.shape} and groups {g.shape} must have the same length")
    names = _group_order(g, UNKNOWN)
    included = [n for n in names if not (exclude_unknown and n == UNKNOWN)]
    point = dice_stats(dice, iou, g, names, included)
    keys = list(point)
    cis: Dict[str, Tuple[float, float, bool]] = {}
    if n_boot and dice.size > 1:
        from agglom.metrics.bootstrap import Resampler, clusters_of, replicate
        from agglom.metrics.intervals import bca_interval

        def row(idx: np.ndarray) -> List[float]:
            st = dice_stats(dice[idx], iou[idx], g[idx], names, included)
            return [st[k] for k in keys]

        resampler = Resampler([np.flatnonzero(g == n) for n in names], clusters_of(patients, dice.size))
        r = replicate(row, resampler, int(n_boot), seed)
        for j, k in enumerate(keys):
            cis[k] = bca_interval(point[k], r["reps"][:, j], r["jack"][:, j], ci)
    out: Dict[str, Any] = {"n": int(dice.size), "group_names": names,
                           "excluded_from_gaps": [n for n in names if n not in included]}
    for k in STAT_KEYS:
        out[k] = _m(point[k], cis.get(k))
    gd = {n: point[f"dice:{n}"] for n in included if math.isfinite(point[f"dice:{n}"])}
    out["worst_group_dice"]["group"] = min(gd, key=gd.get) if gd else None
    out["best_group_dice"]["group"] = max(gd, key=gd.get) if gd else None
    out["groups"] = {n: {"n": int(np.sum(g == n)), "dice": _m(point[f"dice:{n}"], cis.get(f"dice:{n}")),
                         "iou": _m(point[f"iou:{n}"], cis.get(f"iou:{n}"))} for n in names}
    if patients is not None:
        from agglom.metrics.bootstrap import add_patient_counts

        add_patient_counts(out, g, np.asarray(patients, dtype=object).reshape(-1))
    return out


# --------------------------------------------------------------------------- the probe
#: ``eval.dense_head``: ``linear`` — one 1x1 map (the probe protocol); ``conv`` — a small head, a 3x3 conv to
#: CONV_HIDDEN channels, GELU, a 1x1 map (it sees each cell's neighbours: what a linear probe cannot)
DENSE_HEADS = ("linear", "conv")
CONV_HIDDEN = 32


def _head(kind: str, channels: int, gen: torch.Generator) -> torch.nn.Module:
    """The probe's map from standardised features to a foreground logit, initialised from ``gen`` alone."""
    if kind not in DENSE_HEADS:
        raise ValueError(f"dense head {kind!r}: choose one of {', '.join(DENSE_HEADS)}")
    last = torch.nn.Conv2d(channels if kind == "linear" else CONV_HIDDEN, 1, kernel_size=1)
    layers = [last] if kind == "linear" else [torch.nn.Conv2d(channels, CONV_HIDDEN, 3, padding=1), torch.nn.GELU(),
                                              last]
    with torch.no_grad():
        for m in layers:
            if isinstance(m, torch.nn.Conv2d):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, 0.01 if m is last else (2.0 / fan_in) ** 0.5, generator=gen)
                m.bias.zero_()
    return torch.nn.Sequential(*layers)


class DenseProbe:
    """A dense probe: standardise channels (train statistics), map each feature vector (``linear``, 1x1) or each
    3x3 neighbourhood (``conv``) to a foreground logit, upsample bilinearly to the mask size. ``fit`` trains it;
    ``predict`` gives probabilities."""

    def __init__(self, channels: int, mean: torch.Tensor, std: torch.Tensor, seed: int = 0, head: str = "linear"):
        gen = torch.Generator().manual_seed(int(seed))
        self.conv = _head(head, channels, gen)
        self.mean, self.std, self.gen = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1), gen
        self.threshold = 0.5

    def logits(self, feats: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        z = (feats.float() - self.mean) / self.std
        return F.interpolate(self.conv(z), size=size, mode="bilinear", align_corners=False)[:, 0]

    def fit(self, feats: np.ndarray, masks: np.ndarray, steps: int = 300, lr: float = 0.01,
            batch_size: int = 64) -> List[float]:
        """Adam on pixel BCE + (1 - soft Dice of the batch); ``IGNORE`` pixels left out. Returns the losses."""
        x = torch.from_numpy(np.asarray(feats))
        y = torch.from_numpy(np.asarray(masks).astype(np.int64))
        size = tuple(y.shape[-2:])
        opt = torch.optim.Adam(self.conv.parameters(), lr=lr)
        losses = []
        n = x.shape[0]
        for _ in range(int(steps)):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=self.gen)
            target = y[idx]
            valid = (target != IGNORE).float()
            fg = (target > 0).float()
            logit = self.logits(x[idx], size)
            bce = (F.binary_cross_entropy_with_logits(logit, fg, reduction="none") * valid).sum() / valid.sum().clamp(min=1)
            p = torch.sigmoid(logit) * valid
            soft = 1.0 - (2.0 * (p * fg).sum() + 1.0) / (p.sum() + (fg * valid).sum() + 1.0)
            loss = bce + soft
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return losses

    @torch.no_grad()
    def predict(self, feats: np.ndarray, size: Tuple[int, int], batch_size: int = 256) -> np.ndarray:
        """Foreground probabilities, float32 [N, H, W]."""
        x = torch.from_numpy(np.asarray(feats))
        out = [torch.sigmoid(self.logits(x[i:i + batch_size], size)).numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, *size), np.float32)


def channel_stats(feats: np.ndarray, chunk: int = 256) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of [N, C, h, w] features (float64 sums, chunked)."""
    c = feats.shape[1]
    s = np.zeros(c)
    ss = np.zeros(c)
    cnt = 0
    for i in range(0, len(feats), chunk):
        f = np.asarray(feats[i:i + chunk], dtype=np.float64)
        s += f.sum((0, 2, 3))
        ss += (f * f).sum((0, 2, 3))
        cnt += f.shape[0] * f.shape[2] * f.shape[3]
    mean = s / max(cnt, 1)
    std = np.sqrt(np.maximum(ss / max(cnt, 1) - mean * mean, 0.0)) + 1e-6
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)


def has_mask(masks: np.ndarray) -> np.ndarray:
    """[N] bool: the samples with ground truth (some pixel not IGNORE)."""
    m = np.asarray(masks)
    return (m != IGNORE).reshape(len(m), -1).any(1)


def has_foreground(masks: np.ndarray) -> np.ndarray:
    """[N] bool: the samples whose mask has a foreground pixel."""
    m = np.asarray(masks)
    return (m > 0).reshape(len(m), -1).any(1)


def overlap(probe: DenseProbe, feats: np.ndarray, masks: np.ndarray, thresholds: Sequence[float],
            chunk: int = 128) -> Dict[str, np.ndarray]:
    """Per sample and threshold — probability maps made ``chunk`` samples at a time and never kept, so memory does
    not grow with the split at full mask resolution: ``{"dice", "iou", "pred_area"}``, each [N, T] (``pred_area``:
    the share of the sample's valid pixels predicted foreground)."""
    size = tuple(masks.shape[-2:])
    out: Dict[str, List[np.ndarray]] = {"dice": [], "iou": [], "pred_area": []}
    for i in range(0, len(feats), chunk):
        prob = probe.predict(feats[i:i + chunk], size)
        m = np.asarray(masks[i:i + chunk])
        valid = m != IGNORE
        n_valid = np.maximum(valid.reshape(len(m), -1).sum(1), 1)
        cols: Dict[str, List[np.ndarray]] = {"dice": [], "iou": [], "pred_area": []}
        for t in thresholds:
            pred = prob >= t
            d, u = dice_iou(pred, m)
            cols["dice"].append(d)
            cols["iou"].append(u)
            cols["pred_area"].append((pred & valid).reshape(len(m), -1).sum(1) / n_valid)
        for k, v in cols.items():
            out[k].append(np.stack(v, 1))
    return {k: np.concatenate(v) if v else np.zeros((0, len(thresholds))) for k, v in out.items()}


def choose_threshold(dice: np.ndarray, masks: np.ndarray) -> Tuple[float, Dict[str, float]]:
    """From per-sample Dice at every grid threshold ([N, len(THRESHOLDS)], :func:`overlap`): the threshold with the
    best mean Dice over the samples with foreground (ties: the lower one; 0.5 when no sample has foreground), and
    the mean Dice at every grid point (so the choice can be checked)."""
    sel = has_foreground(masks)
    means = dice[sel].mean(0) if sel.any() else np.full(len(THRESHOLDS), np.nan)
    curve = {f"{t:g}": float(v) for t, v in zip(THRESHOLDS, means)}
    finite = np.isfinite(means)
    best_t = float(THRESHOLDS[int(np.argmax(np.where(finite, means, -1.0)))]) if finite.any() else 0.5
    return best_t, curve


def fit_and_score(train: Tuple[np.ndarray, np.ndarray], val: Tuple[np.ndarray, np.ndarray],
                  test: Tuple[np.ndarray, np.ndarray], steps: int = 300, lr: float = 0.01,
                  seed: int = 0, head: str = "linear") -> Dict[str, Any]:
    """Fit the probe on ``train = (features [N, C, h, w], masks [N, H, W])`` (masked samples only), choose the
    threshold on ``val``, and score ``test``: ``{"threshold", "val_curve", "dice", "iou", "pred_area", "n_train",
    "losses", "probe"}`` with per-test-sample Dice, IoU and predicted area at the threshold (every test sample; the caller
    picks which to report)."""
    f_tr, m_tr = train
    keep = has_mask(m_tr)
    if not keep.any():
        raise ValueError("no training sample has a mask")
    f_tr, m_tr = f_tr[keep], m_tr[keep]
    mean, std = channel_stats(f_tr)
    probe = DenseProbe(f_tr.shape[1], mean, std, seed=seed, head=head)
    losses = probe.fit(f_tr, m_tr, steps=steps, lr=lr)
    t, curve = choose_threshold(overlap(probe, val[0], val[1], THRESHOLDS)["dice"], val[1])
    res = {k: v[:, 0] for k, v in overlap(probe, test[0], test[1], [t]).items()}
    return {"threshold": t, "val_curve": curve, **res, "n_train": int(keep.sum()), "losses": losses, "probe": probe}


__all__ = ["DENSE_HEADS", "dice_iou", "dice_stats", "dice_fairness", "DenseProbe", "fit_and_score", "choose_threshold", "overlap",
           "has_mask", "has_foreground", "THRESHOLDS", "STAT_KEYS", "PROTOCOL"]
