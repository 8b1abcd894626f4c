"""The fair recipe is chosen on validation: kept where it lifts the worst group without levelling down, else ERM."""
import numpy as np
import pytest

from agglom.eval.selection import MODES, render_selection, select_recipe
from agglom.eval.verdict import verdict

N = 800


def _seeds(noise_erm, noise_fair, n_seeds=2, offset_b=0.0):
    """Per seed ERM and candidate predictions on the same samples; ``noise_*`` = (noise on A, noise on B)."""
    rng = np.random.default_rng(0)
    keys = np.array([f"k{i}" for i in range(N)])
    g = np.where(np.arange(N) % 5 == 0, "B", "A")
    y = rng.integers(0, 2, N)

    def preds(name, noise, seed):
        a, b = np.random.default_rng(seed).normal(0, 1, N), np.random.default_rng(seed + 99).normal(0, 1, N)
        return {"model": name, "key": keys, "label": y, "site": g,
                "score": y + np.where(g == "B", noise[1] * b, noise[0] * a)}

    out = []
    for i in range(n_seeds):
        erm, fair = preds("erm", noise_erm, 10 + i), preds("fair", noise_fair, 10 + i)
        # the candidate's B scores shifted: every group's AUC is unchanged, the overall AUC (across groups) falls
        fair["score"] = fair["score"] + np.where(g == "B", offset_b, 0.0)
        out.append({"erm": erm, "fair": fair})
    return out


def _choose(seeds, **kw):
    return select_recipe({"fair": verdict(seeds, {}, "site", n_boot=100)}, **kw)


def test_a_candidate_that_lifts_the_worst_group_is_chosen():
    sel = _choose(_seeds((0.5, 2.0), (0.5, 0.7)))
    assert sel["chosen"] == "fair" and sel["candidates"][0]["eligible"]
    assert sel["candidates"][0]["delta_worst_group_auc"]["value"] > 0.1
    text = "\n".join(render_selection(sel, {"fair": "objective.route_by_audit=1"}))
    assert "`objective.route_by_audit=1`" in text and "| yes |" in text


def test_a_candidate_that_levels_down_is_refused_and_erm_kept():
    # the mirror of the case above: the candidate makes B worse beyond its interval
    sel = _choose(_seeds((0.5, 0.7), (0.5, 2.0)))
    assert sel["chosen"] == "erm"
    row = sel["candidates"][0]
    assert not row["eligible"] and row["levelled_down"] == ["B"]
    assert any("levels down B" in w for w in row["why_not"]) and "ERM student is kept" in sel["reason"]
    assert "the ERM student (no fair recipe)" in "\n".join(render_selection(sel, {}))


def test_a_candidate_equal_to_erm_is_not_chosen():
    # no lift at all (the held-out variant: ERM already even): nothing to gain, ERM is kept
    sel = _choose(_seeds((0.5, 0.6), (0.5, 0.6)))
    assert sel["chosen"] == "erm"
    assert sel["candidates"][0]["why_not"] == ["raises the validation worst-group AUC by less than 0.010"]


def test_a_lift_inside_the_noise_is_not_worth_a_change_of_recipe():
    seeds = _seeds((0.5, 0.62), (0.5, 0.6))  # a small lift on B
    v = verdict(seeds, {}, "site", n_boot=100)
    lift = v["fair_vs_erm"]["worst"]["value"]
    assert 0 < lift
    assert select_recipe({"fair": v}, min_lift=lift + 1e-6)["chosen"] == "erm"
    assert select_recipe({"fair": v}, min_lift=lift / 2)["chosen"] == "fair"


def test_a_lift_bought_with_too_much_overall_utility_is_refused():
    sel = _choose(_seeds((0.5, 2.0), (0.5, 0.7), offset_b=3.0), max_overall_cost=0.01)
    row = sel["candidates"][0]
    assert row["delta_worst_group_auc"]["value"] > 0 and row["delta_overall_auc"]["value"] < -0.01
    assert sel["chosen"] == "erm" and any("overall validation AUC cost" in w for w in row["why_not"])
    assert _choose(_seeds((0.5, 2.0), (0.5, 0.7), offset_b=3.0), max_overall_cost=1.0)["chosen"] == "fair"


def test_always_uses_the_candidate_and_bad_modes_are_refused():
    assert _choose(_seeds((0.5, 0.7), (0.5, 2.0)), mode="always")["chosen"] == "fair"
    with pytest.raises(ValueError, match="choose one of validation, always"):
        _choose(_seeds((0.5, 0.7), (0.5, 2.0)), mode="best")


def test_the_demo_offers_the_selection_modes_of_the_library(tmp_path, capsys):
    from agglom.demo import SELECT_MODES, DemoArgs, main

    assert tuple(SELECT_MODES) == MODES and DemoArgs().select == "validation" and DemoArgs().levelling_margin == 0
    assert main([f"out={tmp_path / 'o'}", f"data={tmp_path / 'd'}", "levelling_margin=-0.001"]) == 2
    assert "levelling_margin" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_the_levelling_margin_counts_only_falls_beyond_it():
    from agglom.eval.selection import levelled_beyond

    deltas = {"A": {"value": -0.0006, "ci": [-0.0013, -0.0001]}, "B": {"value": 0.03, "ci": [0.01, 0.05]},
              "C": {"value": -0.002, "ci": [-0.004, 0.0005]}, "D": {"value": -0.01, "ci": None}}
    assert levelled_beyond(deltas) == ["A"]  # C's interval crosses 0; D has none
    assert levelled_beyond(deltas, 0.00009) == ["A"] and levelled_beyond(deltas, 0.001) == []


def test_a_small_fall_of_the_better_group_is_refused_unless_inside_the_margin():
    # the candidate lifts B and makes A a little worse beyond its interval (a held-out variant's case)
    seeds = _seeds((0.5, 2.0), (0.56, 0.7), n_seeds=2)
    strict = _choose(seeds)
    row = strict["candidates"][0]
    assert strict["chosen"] == "erm" and row["levelled_down"] == ["A"]
    upper = row["delta_groups"]["A"]["ci"][1]
    loose = _choose(seeds, margin=-upper * 1.01)
    assert loose["chosen"] == "fair" and loose["candidates"][0]["levelled_down"] == [] and loose["margin"] > 0
    assert "non-inferiority margin" in "\n".join(render_selection(loose, {}))
    assert _choose(seeds, margin=-upper * 0.99)["chosen"] == "erm"
    with pytest.raises(ValueError, match="margin"):
        _choose(seeds, margin=-0.1)


def test_the_sweeps_levelling_guard_takes_the_same_margin():
    """`agglom sweep`'s validation guard (sweep.levelling_margin) flags a fall only when its whole paired interval
    lies below -margin, per attribute and per label of a multi-label comparison; excluded groups never flag."""
    from agglom.eval.sweep import levelled_beyond_margin

    one = {"groups": {"A": {"delta": -0.0006, "ci": [-0.0013, -0.0001]}, "B": {"delta": 0.03, "ci": [0.01, 0.05]},
                      "C": {"delta": -0.2, "ci": [-0.3, -0.1]}}, "excluded": ["C"]}
    assert levelled_beyond_margin(one, 0.0) == ["A"]
    assert levelled_beyond_margin(one, 0.00005) == ["A"] and levelled_beyond_margin(one, 0.001) == []
    per_label = {"l0": one, "l1": {"groups": {"B": {"delta": -0.01, "ci": [-0.02, -0.005]}, "D": {"delta": None}}}}
    assert levelled_beyond_margin(per_label, 0.0) == ["A", "B"]
    assert levelled_beyond_margin(per_label, 0.001) == ["B"]


def test_a_negative_sweep_margin_is_refused_before_any_work(capsys):
    from agglom.cli import main

    assert main(["sweep", "sweep.levelling_margin=-0.1"]) == 2
    assert "sweep.levelling_margin" in capsys.readouterr().err
