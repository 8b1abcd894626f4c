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


def test_the_demo_offers_the_selection_modes_of_the_library():
    from agglom.demo import SELECT_MODES, DemoArgs

    assert tuple(SELECT_MODES) == MODES and DemoArgs().select == "validation"
