"""The task: group objectives per teacher or on the combined loss; λ = 0 reproduces ERM exactly."""
import pytest
import torch
from omegaconf import OmegaConf

import teachers as zoo
from agglom.config.schema import Recipe
from agglom.distill.task import AgglomTask, teacher_spec


def _task(scope, group, lam=0.0):
    cfg = OmegaConf.structured(Recipe)
    cfg = OmegaConf.merge(cfg, {"teachers": [{"name": "tiny-clip"}, {"name": "tiny-sam", "weight": 2.0}]})
    cfg.data.image_size = 32
    cfg.student.model_args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    cfg.objective.group, cfg.objective.lam, cfg.objective.group_scope = group, lam, scope
    torch.manual_seed(0)
    ts = {e.name: zoo.build_teacher(e.name, input_mean=[0.5] * 3, input_std=[0.5] * 3) for e in cfg.teachers}
    for name, t in ts.items():
        t.name = name
    specs = [teacher_spec(e, ts[e.name]) for e in cfg.teachers]
    task = AgglomTask(cfg, specs, ts, ["A", "B", "unknown"], in_chans=3)
    return task


BATCH = {"image": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
         "group": torch.tensor([0, 0, 0, 0, 0, 1, 1, 2]), "key": [str(i) for i in range(8)]}


@pytest.mark.parametrize("scope", ["teacher", "sample"])
@pytest.mark.parametrize("group", ["variance", "gap"])
def test_lambda_zero_is_erm(scope, group):
    erm = _task(scope, "erm")(BATCH)
    other = _task(scope, group, lam=0.0)(BATCH)
    assert torch.equal(erm["loss"], other["loss"])
    assert not torch.equal(_task(scope, group, lam=5.0)(BATCH)["loss"], erm["loss"])


def test_per_teacher_scope_keeps_one_groupdro_state_per_teacher():
    task = _task("teacher", "groupdro")
    task.train()
    out = task(BATCH)
    out["loss"].backward()
    q = [m.q.clone() for m in task.objective["groups"]]
    assert len(q) == 2 and not torch.equal(q[0], q[1])  # each teacher's worst group is its own
    state = task.objective.state_dict()
    fresh = _task("teacher", "groupdro")
    fresh.objective.load_state_dict(state)
    assert all(torch.equal(a.q, b) for a, b in zip(fresh.objective["groups"], q))


def test_erm_scopes_agree_without_teacher_drop():
    a = _task("teacher", "erm")(BATCH)["loss"]
    b = _task("sample", "erm")(BATCH)["loss"]
    torch.testing.assert_close(a, b)


def test_metric_names_use_the_card_name_of_a_teacher_given_by_path():
    from agglom.distill.task import metric_names

    assert metric_names(["tiny-clip", "runs/demo/teachers/ft-general", "cards/my-card.yaml"]) == \
        ["tiny-clip", "ft-general", "my-card"]
    assert metric_names(["a/ft", "b/ft"]) == ["a/ft", "b/ft"]  # two would collide: the full names stay


def test_a_teacher_run_on_chunks_gives_the_same_targets():
    """teachers[].batch_size runs a big teacher on a few images at a time (memory), with the same outputs."""
    task = _task("teacher", "erm")
    whole = task.raw_targets(BATCH, BATCH["image"])
    task.chunk = {"tiny-clip": 3, "tiny-sam": 1}
    chunked = task.raw_targets(BATCH, BATCH["image"])
    for name in whole:
        for k in ("summary", "spatial"):
            assert torch.allclose(whole[name][k], chunked[name][k], atol=1e-5), (name, k)


def test_a_reference_is_held_in_the_routed_losses_units(tmp_path):
    """Routing multiplies teacher t's loss on group g by w_tg before the group objective; the reference run's
    losses (unrouted) are scaled by the same w_tg, so routing alone does not make a group look above its reference."""
    import json

    rec = {"step": 1, "ema/tiny-clip/A": 0.2, "ema/tiny-clip/B": 0.6, "ema/tiny-sam/A": 0.3, "ema/tiny-sam/B": 0.5}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(rec) + "\n")
    cfg = OmegaConf.structured(Recipe)
    cfg = OmegaConf.merge(cfg, {"teachers": [{"name": "tiny-clip"}, {"name": "tiny-sam"}],
                                "objective": {"group": "excess", "lam": 1.0, "reference": str(tmp_path),
                                              "routing": {"tiny-sam": {"B": 3.0}}}})
    cfg.data.image_size = 32
    cfg.student.model_args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    ts = {e.name: zoo.build_teacher(e.name, input_mean=[0.5] * 3, input_std=[0.5] * 3) for e in cfg.teachers}
    task = AgglomTask(cfg, [teacher_spec(e, ts[e.name]) for e in cfg.teachers], ts, ["A", "B", "unknown"], 3)
    refs = [o.reference[:2].tolist() for o in task.objective["groups"]]
    assert refs[0] == pytest.approx([0.2, 0.6]) and refs[1] == pytest.approx([0.3, 1.5])


def test_routing_takes_the_short_name_of_a_teacher_given_by_path():
    from agglom.objective.routing import build_routing

    w = build_routing({"ft-fair": {"B": 2.0}}, ["runs/demo/teachers/ft-fair"], ["A", "B"],
                      aliases=["ft-fair"])
    assert w.tolist() == [[1.0, 2.0]]
    with pytest.raises(ValueError, match="unknown teacher 'ft'"):
        build_routing({"ft": {"B": 2.0}}, ["runs/demo/teachers/ft-fair"], ["A", "B"], aliases=["ft-fair"])
