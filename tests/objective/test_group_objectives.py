"""Group objectives (erm/balanced/variance/gap/groupdro), teacher × group routing, per-group tracking."""
from __future__ import annotations

import math

import pytest
import torch

from agglom.config.schema import ObjectiveConfig
from agglom.objective.groups import build_group_objective, list_group_objectives
from agglom.objective.routing import apply_routing, build_routing
from agglom.objective.tracking import GroupTeacherTracker


def _cfg(group="erm", **kw):
    return ObjectiveConfig(group=group, **kw)


def _batch(seed=0, B=32, G=4):
    gen = torch.Generator().manual_seed(seed)
    loss = torch.rand(B, generator=gen) * 2
    group = torch.randint(0, G, (B,), generator=gen)
    return loss, group


def test_registry_lists_all():
    assert {"erm", "balanced", "variance", "gap", "groupdro"} <= set(list_group_objectives())
    with pytest.raises(ValueError, match="choose one of"):
        build_group_objective(_cfg("nope"), 3)


def test_erm_is_mean():
    loss, group = _batch()
    obj = build_group_objective(_cfg("erm"), 4)
    out, terms = obj(loss, group)
    assert torch.equal(out, loss.mean())
    assert float(terms["parity"]) == 0.0
    w = torch.rand(loss.shape[0])
    out_w, _ = obj(loss, group, w)
    assert torch.allclose(out_w, (loss * w).sum() / w.sum())


def test_balanced_equals_mean_of_group_means_by_hand():
    loss = torch.tensor([1.0, 3.0, 2.0, 10.0, 0.5, 0.5, 0.5])
    group = torch.tensor([0, 0, 1, 2, 2, 2, 2])
    # group means: g0 = 2, g1 = 2, g2 = (10 + 1.5)/4 = 2.875; group 3 absent -> skipped
    obj = build_group_objective(_cfg("balanced"), 4)
    out, terms = obj(loss, group)
    assert out.item() == pytest.approx((2.0 + 2.0 + 2.875) / 3)
    assert terms["utility"].item() == pytest.approx(loss.mean().item())
    assert set(k for k in terms if k.startswith("group/")) == {"group/0", "group/1", "group/2", "group/3"}
    assert terms["group/2"].item() == pytest.approx(2.875)
    assert torch.isnan(terms["group/3"])  # absent from the batch: NaN (null in metrics.jsonl), not a made-up 0
    assert all(torch.isfinite(v).all() for k, v in terms.items() if k != "group/3")


@pytest.mark.parametrize("name", ["variance", "gap"])
def test_lambda_zero_reproduces_erm_bitwise(name):
    erm = build_group_objective(_cfg("erm"), 5, unknown_index=4)
    obj = build_group_objective(_cfg(name, lam=0.0), 5, unknown_index=4)
    for seed in range(5):
        loss, group = _batch(seed, B=37, G=5)
        a, _ = erm(loss, group)
        b, terms = obj(loss, group)
        assert torch.equal(a, b)
        assert a.numpy().tobytes() == b.numpy().tobytes()
        w = torch.rand(37)
        assert torch.equal(erm(loss, group, w)[0], obj(loss, group, w)[0])


def test_variance_and_gap_by_hand():
    loss = torch.tensor([1.0, 1.0, 2.0, 4.0])
    group = torch.tensor([0, 0, 1, 2])
    means = torch.tensor([1.0, 2.0, 4.0])
    pop_var = means.var(unbiased=False).item()
    out, terms = build_group_objective(_cfg("variance", lam=0.5), 3)(loss, group)
    assert out.item() == pytest.approx(loss.mean().item() + 0.5 * pop_var)
    assert terms["parity"].item() == pytest.approx(0.5 * pop_var)
    out, terms = build_group_objective(_cfg("gap", lam=2.0), 3)(loss, group)
    assert out.item() == pytest.approx(loss.mean().item() + 2.0 * 3.0)


def test_unknown_excluded_from_parity_included_in_utility():
    # group 2 is unknown and has a huge loss
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0, 100.0])
    group = torch.tensor([0, 0, 1, 1, 2])
    mean = loss.mean().item()
    for name, expected_excl, expected_incl in [
        ("balanced", 2.0, (1 + 3 + 100) / 3),
        ("gap", mean + 1.0 * 2.0, mean + 1.0 * 99.0),
        ("variance", mean + torch.tensor([1.0, 3.0]).var(unbiased=False).item(),
         mean + torch.tensor([1.0, 3.0, 100.0]).var(unbiased=False).item()),
    ]:
        excl = build_group_objective(_cfg(name, lam=1.0), 3, unknown_index=2, exclude_unknown=True)
        incl = build_group_objective(_cfg(name, lam=1.0), 3, unknown_index=2, exclude_unknown=False)
        out_e, terms_e = excl(loss, group)
        out_i, _ = incl(loss, group)
        assert out_e.item() == pytest.approx(expected_excl), name
        assert out_i.item() == pytest.approx(expected_incl), name
        assert terms_e["utility"].item() == pytest.approx(mean)  # unknown always in the utility
        assert "group/2" in terms_e  # still reported
    # groupdro: q never moves to the unknown group when excluded
    dro = build_group_objective(_cfg("groupdro", groupdro_eta=1.0), 3, unknown_index=2)
    for _ in range(20):
        dro(loss, group)
    assert dro.q[2].item() == 0.0
    assert dro.q[1] > dro.q[0]
    # a batch of unknown samples only falls back to the utility
    out, terms = build_group_objective(_cfg("gap", lam=1.0), 3, unknown_index=2)(loss[4:], group[4:])
    assert out.item() == pytest.approx(100.0) and terms["parity"].item() == 0.0


def test_groupdro_moves_weight_to_worst_group():
    torch.manual_seed(0)
    obj = build_group_objective(_cfg("groupdro", groupdro_eta=0.1), 3)
    obj.train()
    for step in range(200):
        group = torch.randint(0, 3, (24,))
        loss = torch.rand(24) * 0.2 + (group == 1).float() * 1.0  # group 1 is the hard one
        if step % 7 == 0:  # group 2 absent from some batches: skipped, no NaN
            keep = group != 2
            loss, group = loss[keep], group[keep]
        out, terms = obj(loss, group)
        assert torch.isfinite(out)
    q = obj.q
    assert int(q.argmax()) == 1 and q[1] > 0.9
    assert q.sum().item() == pytest.approx(1.0)
    assert obj.counts.sum().item() > 0
    # the loss is q-weighted over present groups (renormalised)
    loss = torch.tensor([0.0, 1.0, 2.0])
    group = torch.tensor([0, 1, 2])
    obj.eval()
    out, terms = obj(loss, group)
    assert out.item() == pytest.approx((q * loss).sum().item() / q.sum().item(), rel=1e-5)
    assert "q/1" in terms


def test_groupdro_size_adjust_favours_small_groups():
    obj = build_group_objective(_cfg("groupdro", groupdro_eta=0.1, groupdro_size_adjust=1.0), 2)
    loss = torch.ones(21)
    group = torch.tensor([0] * 20 + [1])  # equal losses, group 1 much smaller
    for _ in range(10):
        obj(loss, group)
    assert obj.q[1] > obj.q[0]


def test_groupdro_state_dict_round_trip():
    cfg = _cfg("groupdro", groupdro_eta=0.5)
    a = build_group_objective(cfg, 4, unknown_index=3)
    for seed in range(10):
        loss, group = _batch(seed, G=4)
        a(loss + (group == 0).float(), group)
    sd = a.state_dict()
    assert {"q", "counts", "steps"} <= set(sd)
    b = build_group_objective(cfg, 4, unknown_index=3)
    assert not torch.equal(b.q, a.q)
    b.load_state_dict(sd)
    assert torch.equal(b.q, a.q) and torch.equal(b.counts, a.counts)
    loss, group = _batch(99, G=4)
    oa, _ = a(loss, group)
    ob, _ = b(loss, group)
    assert torch.equal(oa, ob) and torch.equal(a.q, b.q)


@pytest.mark.parametrize("name", ["erm", "balanced", "variance", "gap", "groupdro"])
def test_gradient_flows(name):
    x = torch.randn(16, requires_grad=True)
    group = torch.tensor([0, 1, 2, 3] * 4)
    obj = build_group_objective(_cfg(name, lam=0.7), 5, unknown_index=4)
    out, terms = obj(x ** 2, group)
    out.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(not v.requires_grad for v in terms.values())


def test_single_group_and_bad_indices():
    obj = build_group_objective(_cfg("variance", lam=1.0), 2)
    loss = torch.tensor([1.0, 2.0])
    out, terms = obj(loss, torch.tensor([0, 0]))
    assert out.item() == pytest.approx(1.5) and terms["parity"].item() == 0.0
    with pytest.raises(ValueError):
        obj(loss, torch.tensor([0, 2]))


def test_routing_build_and_apply():
    w = build_routing({"b": {"g1": 2.0}, "a": {"g0": 0.0}}, ["a", "b"], ["g0", "g1", "unknown"])
    assert w.shape == (2, 3)
    assert torch.equal(w, torch.tensor([[0.0, 1.0, 1.0], [1.0, 2.0, 1.0]]))
    loss = torch.ones(4, 2, requires_grad=True)
    group = torch.tensor([0, 1, 2, 1])
    out = apply_routing(loss, group, w)
    assert torch.equal(out.detach(), torch.tensor([[0.0, 1.0], [1.0, 2.0], [1.0, 1.0], [1.0, 2.0]]))
    out.sum().backward()
    assert loss.grad is not None
    assert torch.equal(build_routing({}, ["a"], ["g"]), torch.ones(1, 1))


def test_routing_validation_errors():
    with pytest.raises(ValueError, match=r"unknown teacher 'c'.*valid teachers: a, b"):
        build_routing({"c": {"g0": 1.0}}, ["a", "b"], ["g0"])
    with pytest.raises(ValueError, match=r"unknown group 'gx'.*valid groups: g0, g1"):
        build_routing({"a": {"gx": 1.0}}, ["a", "b"], ["g0", "g1"])
    with pytest.raises(ValueError, match="finite and >= 0"):
        build_routing({"a": {"g0": -1.0}}, ["a"], ["g0"])
    with pytest.raises(ValueError, match="must be a number"):
        build_routing({"a": {"g0": "x"}}, ["a"], ["g0"])


def test_tracker_ema_mask_and_state():
    tr = GroupTeacherTracker(3, ["t0", "t1"], ["a", "b", "unknown"], momentum=0.5)
    loss = torch.tensor([[1.0, 10.0], [3.0, float("nan")], [5.0, 7.0]])
    mask = torch.tensor([[1, 1], [1, 0], [1, 1]], dtype=torch.bool)
    group = torch.tensor([0, 0, 1])
    tr.update(loss, mask, group)
    d = tr.as_dict()
    assert d == {"t0/a": 2.0, "t1/a": 10.0, "t0/b": 5.0, "t1/b": 7.0}
    tr.update(torch.tensor([[4.0, 2.0]]), None, torch.tensor([0]))
    d = tr.as_dict()
    assert d["t0/a"] == pytest.approx(3.0) and d["t1/a"] == pytest.approx(6.0) and d["t0/b"] == 5.0
    assert all(math.isfinite(v) for v in d.values())
    tr2 = GroupTeacherTracker(3, ["t0", "t1"], ["a", "b", "unknown"], momentum=0.5)
    tr2.load_state_dict(tr.state_dict())
    assert tr2.as_dict() == tr.as_dict()


# ----------------------------------------------------------------------------- one-sided objectives
def _group_weights(obj, loss, group):
    """d objective / d loss_i summed per group: the weight each group gets in the gradient."""
    loss = loss.clone().requires_grad_(True)
    out, _ = obj(loss, group)
    out.backward()
    G = int(group.max()) + 1
    return torch.zeros(G).index_add(0, group, loss.grad)


def test_excess_never_raises_the_weight_of_a_group_below_the_mean():
    # group means: g0 = 1.0 (below the mean of means 2.0), g1 = 3.0 (above)
    loss = torch.tensor([1.0, 1.0, 1.0, 3.0])
    group = torch.tensor([0, 0, 0, 1])
    erm = _group_weights(build_group_objective(_cfg("erm"), 2), loss, group)
    ex = _group_weights(build_group_objective(_cfg("excess", lam=2.0), 2), loss, group)
    # ERM: g0 gets 3/4, g1 1/4; excess adds λ/|G| = 1 to g1 only (its mean loss is above the mean of group means)
    assert ex[0].item() == pytest.approx(erm[0].item()) == pytest.approx(0.75)
    assert ex[1].item() == pytest.approx(0.25 + 2.0 / 2)
    out, terms = build_group_objective(_cfg("excess", lam=2.0), 2)(loss, group)
    assert out.item() == pytest.approx(loss.mean().item() + 2.0 * (3.0 - 2.0) / 2)
    assert terms["parity"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(5))
def test_excess_weights_are_erm_weights_plus_a_nonnegative_push(seed):
    loss, group = _batch(seed, B=40, G=4)
    erm = _group_weights(build_group_objective(_cfg("erm"), 4), loss, group)
    ex = _group_weights(build_group_objective(_cfg("excess", lam=1.5), 4), loss, group)
    means = torch.zeros(4).index_add(0, group, loss) / torch.zeros(4).index_add(0, group, torch.ones_like(loss))
    below = means <= means.mean()
    assert torch.allclose(ex[below], erm[below])
    assert (ex >= erm - 1e-7).all()


def test_gap_pushes_the_best_group_up_excess_does_not():
    """The symmetric gap gives the best-off group a negative weight (its loss is pushed *up*: levelling down)."""
    loss = torch.tensor([0.2, 0.2, 1.0, 1.0])
    group = torch.tensor([0, 0, 1, 1])
    gap = _group_weights(build_group_objective(_cfg("gap", lam=4.0), 2), loss, group)
    ex = _group_weights(build_group_objective(_cfg("excess", lam=4.0), 2), loss, group)
    assert gap[0] < 0  # 0.5 - 4
    assert ex[0].item() == pytest.approx(0.5)


def test_excess_with_a_reference_pushes_only_groups_above_it():
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    group = torch.tensor([0, 0, 1, 1])
    # g1 is worse than g0 but at its reference (it cannot do better); g0 is above its own reference
    obj = build_group_objective(_cfg("excess", lam=1.0), 2, reference=[0.5, 3.0])
    w = _group_weights(obj, loss, group)
    assert w[0].item() == pytest.approx(0.5 + 0.5) and w[1].item() == pytest.approx(0.5)
    out, _ = obj(loss, group)
    assert out.item() == pytest.approx(2.0 + (1.0 - 0.5) / 2)


def test_catchup_pushes_a_group_worse_than_the_mean_even_at_its_reference():
    """Same case as above: `excess` leaves g1 alone at its reference; `catchup` pushes it to the group mean, and
    still holds g0 to its own (lower) reference."""
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    group = torch.tensor([0, 0, 1, 1])
    obj = build_group_objective(_cfg("catchup", lam=1.0), 2, reference=[0.5, 3.0])
    w = _group_weights(obj, loss, group)
    # g0: above its reference 0.5 (< mean 2) -> +λ/2; g1: above min(3.0, mean 2.0) -> +λ/2
    assert w[0].item() == pytest.approx(0.5 + 0.5) and w[1].item() == pytest.approx(0.5 + 0.5)
    out, terms = obj(loss, group)
    assert out.item() == pytest.approx(2.0 + ((1.0 - 0.5) + (3.0 - 2.0)) / 2)
    assert terms["parity"].item() == pytest.approx(0.75)


def test_catchup_never_raises_the_weight_of_a_group_at_or_below_its_reference_and_the_mean():
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    group = torch.tensor([0, 0, 1, 1])
    # g0 is below both its reference (1.5) and the mean (2.0): it keeps exactly its ERM weight
    w = _group_weights(build_group_objective(_cfg("catchup", lam=3.0), 2, reference=[1.5, 4.0]), loss, group)
    erm = _group_weights(build_group_objective(_cfg("erm"), 2), loss, group)
    assert w[0].item() == pytest.approx(erm[0].item()) == pytest.approx(0.5)
    assert w[1].item() == pytest.approx(0.5 + 3.0 / 2)
    # without a reference it is `excess` without one (the group mean)
    loss, group = _batch(4)
    assert torch.allclose(build_group_objective(_cfg("catchup", lam=1.5), 4)(loss, group)[0],
                          build_group_objective(_cfg("excess", lam=1.5), 4)(loss, group)[0])
    assert torch.equal(build_group_objective(_cfg("catchup", lam=0.0), 4)(loss, group)[0],
                       build_group_objective(_cfg("erm"), 4)(loss, group)[0])


def test_excess_lambda_zero_is_erm_bitwise():
    loss, group = _batch(3)
    assert torch.equal(build_group_objective(_cfg("excess", lam=0.0), 4)(loss, group)[0],
                       build_group_objective(_cfg("erm"), 4)(loss, group)[0])


def test_groupdro_with_reference_weights_the_excess_not_the_hard_group():
    loss = torch.tensor([1.0, 1.0, 3.0, 3.0])
    group = torch.tensor([0, 0, 1, 1])
    plain = build_group_objective(_cfg("groupdro", groupdro_eta=1.0), 2)
    ref = build_group_objective(_cfg("groupdro", groupdro_eta=1.0), 2, reference=[0.0, 3.0])
    for _ in range(3):
        plain(loss, group)
        ref(loss, group)
    assert plain.q[1] > plain.q[0]  # the intrinsically harder group absorbs the weight
    assert ref.q[0] > ref.q[1]  # excess over the reference: g0 is 1 above its reference, g1 is at it


def test_reference_losses_from_a_run(tmp_path):
    import json

    from agglom.objective.reference import reference_losses

    recs = [{"step": 1, "loss": 1.0, "group/A": 0.5, "group/B": 0.9},
            {"step": 2, "loss": 1.0, "group/A": 0.3, "group/B": 0.7, "ema/t1/A": 0.2, "ema/t1/B": 0.6}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{\"cut")
    assert reference_losses(str(tmp_path), ["t1", "t2"], ["A", "B"], True) == [[0.2, 0.6], [None, None]]
    assert reference_losses(str(tmp_path), ["t1"], ["A", "B"], False) == [pytest.approx(0.4), pytest.approx(0.8)]
    from agglom.config.load import ConfigError

    with pytest.raises(ConfigError, match="no losses for teachers"):
        reference_losses(str(tmp_path), ["zz"], ["A"], True)
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        reference_losses(str(tmp_path / "nope"), ["t1"], ["A"], True)


def test_routing_from_a_crafted_audit():
    from agglom.objective.routing import build_routing, routing_from_audit

    # teachers x groups validation AUCs: on B, teacher 2 is by far the most useful; on A all are alike
    auc = [[0.9, 0.6], [0.9, 0.5], [0.9, 0.95]]
    w = routing_from_audit(auc, strength=1.0)
    # B: u = (0.1, 0, 0.45), mean 0.55/3 -> r = (0.545, 0, 2.455): only teacher 2 rises, to 1 + 1.455
    assert w[:, 0].tolist() == [1.0, 1.0, 1.0]
    assert w[0, 1].item() == 1.0 and w[1, 1].item() == 1.0
    assert w[2, 1].item() == pytest.approx(1 + (0.45 / (0.55 / 3) - 1), rel=1e-6)
    assert routing_from_audit(auc, 0.0).eq(1).all()  # strength 0: no routing
    half = routing_from_audit(auc, 0.5)
    assert half[2, 1].item() == pytest.approx(1 + 0.5 * (0.45 / (0.55 / 3) - 1), rel=1e-6)
    # undefined AUC, or no teacher above chance: the group keeps weight 1
    assert routing_from_audit([[None, 0.5], [0.8, 0.4]], 1.0).eq(1).all()
    # explicit routing entries override the automatic ones
    both = build_routing({"t0": {"B": 0.5}}, ["t0", "t1", "t2"], ["A", "B"], base=w)
    assert both[0, 1].item() == 0.5 and both[2, 1].item() == pytest.approx(w[2, 1].item())
