"""Dense evaluation: Dice/IoU and the Dice-fairness metrics against hand-computed values; the 1x1 probe learns a
separable mask."""
import math

import numpy as np
import pytest
from scipy.stats import skew

from agglom.data.masks import IGNORE
from agglom.eval.dense.dense import dice_fairness, dice_iou, fit_and_score, has_foreground


def test_dice_and_iou_by_hand():
    truth = np.zeros((4, 2, 3), dtype=np.int64)
    pred = np.zeros((4, 2, 3), dtype=bool)
    truth[0, 0, :] = 1          # 3 true pixels
    pred[0, 0, :2] = True       # 2 predicted, both right: Dice 2*2/(2+3) = 0.8, IoU 2/3
    pred[0, 1, 2] = True        # + 1 wrong: Dice 2*2/(3+3) = 2/3, IoU 2/4
    truth[1, 1, 1] = 2          # a label map: any label > 0 is foreground; nothing predicted: 0
    # sample 2: nothing true, nothing predicted: agreement on nothing = 1
    truth[3] = IGNORE           # ignored pixels count nowhere
    truth[3, 0, 0] = 1
    pred[3] = True              # only the one valid pixel counts: Dice 1
    dice, iou = dice_iou(pred, truth)
    assert dice.tolist() == pytest.approx([2 / 3, 0.0, 1.0, 1.0])
    assert iou.tolist() == pytest.approx([0.5, 0.0, 1.0, 1.0])


def test_dice_fairness_by_hand():
    dice = np.array([0.9, 0.7, 0.6, 0.2, 0.4, 0.3, 0.1])
    iou = dice / 2
    groups = np.array(["A", "A", "B", "C", "C", "C", "unknown"])
    r = dice_fairness(dice, iou, groups, exclude_unknown=True, n_boot=0)
    gd = np.array([0.8, 0.6, 0.3])           # group means of A, B, C; "unknown" is left out of the gaps
    overall = dice.mean()                     # every evaluated sample, the unknown one included
    assert r["group_names"] == ["A", "B", "C", "unknown"] and r["excluded_from_gaps"] == ["unknown"]
    assert r["dice"]["value"] == pytest.approx(overall)
    assert r["iou"]["value"] == pytest.approx(overall / 2)
    assert [r["groups"][g]["dice"]["value"] for g in "ABC"] == pytest.approx(gd.tolist())
    assert r["groups"]["unknown"]["dice"]["value"] == pytest.approx(0.1) and r["groups"]["C"]["n"] == 3
    assert r["worst_group_dice"]["value"] == pytest.approx(0.3) and r["worst_group_dice"]["group"] == "C"
    assert r["best_group_dice"]["group"] == "A"
    assert r["dice_gap"]["value"] == pytest.approx(0.5)
    std = math.sqrt(((0.8 - 17 / 30) ** 2 + (0.6 - 17 / 30) ** 2 + (0.3 - 17 / 30) ** 2) / 3)
    assert r["dice_std"]["value"] == pytest.approx(std)
    assert r["dice_skewness"]["value"] == pytest.approx(skew(gd, bias=True))
    assert r["es_dice_std"]["value"] == pytest.approx(overall / (1 + std))
    assert r["es_dice"]["value"] == pytest.approx(overall / (1 + abs(overall - 0.8) + abs(overall - 0.6)
                                                            + abs(overall - 0.3)))


def test_dice_fairness_intervals_contain_their_points():
    rng = np.random.default_rng(0)
    g = np.array(["A"] * 60 + ["B"] * 20)
    dice = np.clip(np.where(g == "A", 0.8, 0.6) + 0.1 * rng.standard_normal(80), 0, 1)
    r = dice_fairness(dice, dice, g, n_boot=100, seed=1)
    for k in ("dice", "worst_group_dice", "dice_gap", "es_dice", "es_dice_std"):
        lo, hi = r[k]["ci"]
        assert lo <= r[k]["value"] <= hi
    assert r["groups"]["B"]["dice"]["ci"][1] < r["groups"]["A"]["dice"]["ci"][1]


def _separable(n, rng, cell=8, grid=8):
    """A mask a 1x1 probe can draw exactly: per feature cell a value ``v`` (channel 0, shifted and scaled, plus 5
    noise channels), and the mask is where ``v`` upsampled bilinearly to pixels (the probe's own upsampling) is
    positive — linearly separable at pixel level. A quarter of the samples have no foreground."""
    import torch
    import torch.nn.functional as F

    v = np.full((n, grid, grid), -1.0, dtype=np.float32)
    for i in range(n):
        if i % 4 == 0:
            continue
        t, lft = rng.integers(0, grid - 3, 2)
        h, w = rng.integers(1, 4, 2)
        v[i, t:t + h, lft:lft + w] = 1.0
    v += 0.3 * rng.standard_normal(v.shape).astype(np.float32)
    up = F.interpolate(torch.from_numpy(v)[:, None], size=(grid * cell, grid * cell), mode="bilinear",
                       align_corners=False)[:, 0].numpy()
    masks = (up > 0).astype(np.int16)
    feats = 0.5 * rng.standard_normal((n, 6, grid, grid)).astype(np.float32)
    feats[:, 0] = 2.0 * v + 3.0  # offset and scale are the probe's standardisation's job
    return feats.astype(np.float16), masks


def test_dense_probe_learns_a_separable_mask():
    rng = np.random.default_rng(0)
    test = _separable(48, rng)
    res = fit_and_score(_separable(96, rng), _separable(48, rng), test, steps=300, seed=0)
    fg = has_foreground(test[1])
    assert 30 <= fg.sum() <= 40 and res["n_train"] == 96
    assert res["dice"][fg].mean() >= 0.95
    assert res["dice"][~fg].mean() >= 0.9  # (almost) nothing predicted where nothing is true


def test_spatial_maps_above_the_grid_cap_are_average_pooled():
    import torch

    from agglom.eval.extract import pool_to

    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    assert pool_to(x, 8) is x and pool_to(x, 0) is x
    p = pool_to(x, 4)
    assert p.shape == (2, 3, 4, 4)
    assert p[1, 2, 0, 0] == x[1, 2, :2, :2].mean()


def test_overlay_samples_are_the_first_with_foreground_per_group():
    from agglom.eval.dense.run import overlay_indices

    masks = np.zeros((6, 4, 4), np.int16)
    masks[[1, 2, 3, 5], 1, 1] = 1  # 0 and 4 have no foreground
    groups = np.array(["B", "A", "B", "A", "A", "A"])
    assert overlay_indices(masks, groups, per_group=1).tolist() == [1, 2]  # A first (sorted), then B
    assert overlay_indices(masks, groups, per_group=3).tolist() == [1, 3, 5, 2]


def _shifted(n, rng):
    """Foreground where the *right-hand neighbour's* feature is high: a 1x1 probe cannot see it, a 3x3 head can."""
    f = rng.normal(size=(n, 2, 8, 8)).astype(np.float32)
    m = np.zeros((n, 8, 8), np.int16)
    m[:, :, :-1] = f[:, 0, :, 1:] > 1.0
    return f, m


@pytest.mark.parametrize("head,lo,hi", [("linear", 0.0, 0.5), ("conv", 0.9, 1.0)])
def test_the_conv_head_sees_neighbours_the_linear_probe_cannot(head, lo, hi):
    rng = np.random.default_rng(1)
    test = _shifted(64, rng)
    res = fit_and_score(_shifted(256, rng), _shifted(64, rng), test, steps=400, lr=0.02, seed=0, head=head)
    fg = has_foreground(test[1])
    assert lo <= res["dice"][fg].mean() <= hi
