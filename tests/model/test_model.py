"""Student, heads (every registered head), normalisers (every registered normaliser), losses."""
import pytest
import torch
from omegaconf import OmegaConf

from agglom.config.load import ConfigError
from agglom.config.schema import Recipe
from agglom.model import HEADS, NORMALISERS, AgglomModel, TeacherSpec, build_head, build_normaliser
from agglom.model.agglomerator import to_grid
from agglom.objective.losses import distillation_losses, spatial_loss, summary_loss
from agglom.objective.teacher_balance import TeacherBalance


def tiny_cfg(**over):
    cfg = OmegaConf.structured(Recipe)
    cfg.student.model_args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


SPECS = [TeacherSpec("a", 24, 16, (4, 4)), TeacherSpec("b", 8, 12, (8, 8)), TeacherSpec("c", 10, 6, (16, 16))]


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_shapes_and_grad(head):
    h = build_head(head, 32, 24)
    x = torch.randn(2, 5, 32, requires_grad=True)
    y = h(x)
    assert y.shape == (2, 5, 24)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("summary_tokens", [True, False])
def test_model_predicts_each_teacher_on_its_grid(head, summary_tokens):
    cfg = tiny_cfg(**{"heads.summary": head, "heads.spatial": head, "student.summary_tokens": summary_tokens})
    model = AgglomModel(cfg, SPECS, in_chans=3)
    out = model(torch.randn(2, 3, 64, 64))
    for s in SPECS:
        assert out[s.name]["summary"].shape == (2, s.summary_dim)
        assert out[s.name]["spatial"].shape == (2, s.spatial_dim, *s.grid)
    # one register token per teacher, and distinct summary tokens when asked
    idx = set(model.summary_token_index.values())
    assert len(idx) == (3 if summary_tokens else 1)
    assert model.student.num_prefix_tokens == 1 + (3 if summary_tokens else 0)


def test_student_is_stock_timm_with_our_preprocessing():
    cfg = tiny_cfg(**{"student.mean": [0.1, 0.2, 0.3], "student.std": [0.4, 0.5, 0.6]})
    model = AgglomModel(cfg, SPECS[:1], in_chans=3)
    pc = model.student.pretrained_cfg
    assert tuple(pc["mean"]) == (0.1, 0.2, 0.3) and tuple(pc["std"]) == (0.4, 0.5, 0.6)
    assert tuple(pc["input_size"]) == (3, 64, 64)
    assert type(model.student).__module__.startswith("timm.")


def test_unknown_head_lists_known():
    with pytest.raises(ConfigError, match="heads: unknown head 'nope'; choose one of attn, mlp, resmlp"):
        build_head("nope", 4, 4)


@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_normaliser_round_trip_and_state(name):
    torch.manual_seed(0)
    x = torch.randn(512, 16) * torch.linspace(0.1, 5, 16) + 3.0
    n = build_normaliser(name, 16)
    n.fit(x)
    y = n(x)
    torch.testing.assert_close(n.inverse(y), x, atol=1e-3, rtol=1e-4)
    if name != "none":
        assert y.mean(0).abs().max() < 1e-3
    if name == "phis":  # isotropic: one variance for every channel
        var = y.var(0, unbiased=False)
        assert torch.allclose(var, torch.ones(16), atol=1e-3)
    if name == "zscore":
        assert torch.allclose(y.var(0, unbiased=False), torch.ones(16), atol=1e-3)
    m = build_normaliser(name, 16)
    m.load_state_dict(n.state_dict())
    torch.testing.assert_close(m(x), y)


@pytest.mark.parametrize("name", sorted(set(NORMALISERS) - {"none"}))
@pytest.mark.parametrize("scale", [1e-4, 1.0, 1e3])
def test_normaliser_is_invariant_to_the_teachers_scale(name, scale):
    """Features 1e-4 the size of others (a random tiny DINOv2's summary is ~1e-3, variance ~1e-9) normalise to the
    same targets: an absolute epsilon on the variance used to squash them to a variance of ~0.002."""
    torch.manual_seed(1)
    x = torch.randn(512, 16) * torch.linspace(0.5, 2, 16) + 1.0
    ref, n = build_normaliser(name, 16), build_normaliser(name, 16)
    ref.fit(x)
    n.fit(x * scale)
    torch.testing.assert_close(n(x * scale), ref(x), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(n.inverse(ref(x)), x * scale, atol=1e-3 * scale, rtol=1e-3)


def test_phis_non_power_of_two_is_still_orthogonal():
    n = build_normaliser("phis", 12)
    n.fit(torch.randn(200, 12) * 3)
    r = n.rotation
    torch.testing.assert_close(r @ r.T, torch.eye(12), atol=1e-5, rtol=0)


def test_losses_per_sample_and_granularity():
    p, t = torch.randn(3, 8), torch.randn(3, 8)
    assert summary_loss(p, t).shape == (3,)
    assert torch.allclose(summary_loss(t, t), torch.zeros(3), atol=1e-6)
    sp, st = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    tok = spatial_loss(sp, st, 0.9, 1.0, "token")
    img = spatial_loss(sp, st, 0.9, 1.0, "image")
    assert tok.shape == img.shape == (3,) and not torch.allclose(tok, img)
    # token granularity = mean of per-token losses
    per_tok = [spatial_loss(sp[..., i:i + 1, j:j + 1], st[..., i:i + 1, j:j + 1], 0.9, 1.0, "token")
               for i in range(2) for j in range(2)]
    torch.testing.assert_close(tok, torch.stack(per_tok).mean(0))
    with pytest.raises(ValueError, match="granularity"):
        spatial_loss(sp, st, 0.9, 1.0, "pixel")


def test_distillation_losses_matrix():
    cfg = tiny_cfg()
    preds = {"a": {"summary": torch.randn(2, 5), "spatial": torch.randn(2, 3, 2, 2)}, "b": {"summary": torch.randn(2, 4)}}
    targets = {"a": {"summary": torch.randn(2, 5), "spatial": torch.randn(2, 3, 2, 2)}, "b": {"summary": torch.randn(2, 4)}}
    loss, parts = distillation_losses(preds, targets, ["a", "b"], cfg.objective)
    assert loss.shape == (2, 2) and set(parts) == {"a/summary", "a/spatial", "b/summary"}
    torch.testing.assert_close(loss[:, 1], parts["b/summary"])


def test_teacher_balance_fixed_weights_drop_and_loss_scale():
    cfg = tiny_cfg()
    bal = TeacherBalance(cfg.objective, ["a", "b"], [1.0, 3.0])
    loss = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    per, terms = bal(loss, torch.ones(2, 2))
    torch.testing.assert_close(per, torch.tensor([(1 + 6) / 4, (3 + 15) / 4]))
    per, _ = bal(loss, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # dropping keeps the scale
    torch.testing.assert_close(per, torch.tensor([1.0, 5.0]))
    cfg.objective.teacher_drop = 0.9
    bal = TeacherBalance(cfg.objective, ["a", "b", "c"], [1.0, 1.0, 1.0])
    m = bal.mask(64, torch.device("cpu"))
    assert (m.sum(1) >= 1).all() and m.sum() < 64 * 3
    cfg.objective.teacher_balance = "loss_scale"
    cfg.objective.teacher_drop = 0.0
    bal = TeacherBalance(cfg.objective, ["a", "b"], [1.0, 1.0])
    per, terms = bal(torch.tensor([[1.0, 100.0], [1.0, 100.0]]), torch.ones(2, 2))
    torch.testing.assert_close(terms["teacher/a"], terms["teacher/b"])  # both scaled to ~1


def test_to_grid():
    x = torch.randn(1, 2, 8, 8)
    assert to_grid(x, (4, 4)).shape == (1, 2, 4, 4)
    assert to_grid(x, (16, 16)).shape == (1, 2, 16, 16)
    assert to_grid(x, (8, 8)) is x


def test_teacher_named_by_a_card_path_with_dots():
    cfg = tiny_cfg()
    specs = [TeacherSpec("teachers/cards/tiny-clip.yaml", 8, 4, (4, 4))]
    model = AgglomModel(cfg, specs, in_chans=3)
    out = model(torch.randn(1, 3, 64, 64))
    assert out["teachers/cards/tiny-clip.yaml"]["summary"].shape == (1, 8)
    t = model.normalise_targets("teachers/cards/tiny-clip.yaml", torch.randn(2, 8), torch.randn(2, 4, 4, 4), update=True)
    assert set(t) == {"summary", "spatial"}


def test_evaluation_runs_the_backbone_once_per_batch_and_training_always():
    """AgglomModel.tokens: without gradients, probe features, the dense map and the prediction pass on one batch
    share one backbone forward (the evaluation's three uses); a new batch, an in-place change or training
    recomputes; the outputs are those of separate passes."""
    from agglom.eval.extract import student_spatial_encoder

    torch.manual_seed(0)
    model = AgglomModel(tiny_cfg(), SPECS, in_chans=3)
    calls = []
    real = model.student.forward_features
    model.student.forward_features = lambda x: calls.append(1) or real(x)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        ref_feat, ref_pred = model.features(x, "adapters"), model(x)
        assert len(calls) == 1
        spatial = student_spatial_encoder(model)(x, ["k0", "k1"])
        assert len(calls) == 1 and spatial.shape[0] == 2
        model.features(x.clone(), "adapters")  # another batch (same values): its own forward
        assert len(calls) == 2
        x.mul_(2.0)  # changed in place: recomputed
        changed = model.features(x, "adapters")
        assert len(calls) == 3 and not torch.allclose(changed, ref_feat)
        x.div_(2.0)
    model._tokens_memo = None
    with torch.no_grad():
        torch.testing.assert_close(model.features(x, "adapters"), ref_feat)
        torch.testing.assert_close(model(x)["a"]["summary"], ref_pred["a"]["summary"])
    with torch.inference_mode():  # inference tensors carry no version counter: computed every time
        n = len(calls)
        model.features(x.clone(), "adapters")
        torch.testing.assert_close(model.features(x.clone(), "adapters"), ref_feat)
        assert len(calls) == n + 2
    model.train()
    n = len(calls)
    model(x)
    model(x)
    assert len(calls) == n + 2  # training: every pass its own forward


@pytest.mark.parametrize("head", sorted(HEADS))
def test_spatial_upsample_predicts_a_block_per_token(head):
    """heads.spatial_upsample=r: each token's head predicts an r x r block of the teacher's map (pixel shuffle), so a
    teacher grid finer than the student's tokens is predicted, not interpolated: the 4 cells of a token's 2x2 block
    differ, each from its own slice of the head's output."""
    cfg = tiny_cfg(**{"heads.spatial": head, "heads.spatial_upsample": 2})
    spec = TeacherSpec("fine", 8, 6, (16, 16))  # the student's 64 px / patch 8 = 8 x 8 tokens
    model = AgglomModel(cfg, [spec], in_chans=3)
    assert model.spatial_heads["fine"](torch.randn(1, 3, 32)).shape[-1] == 6 * 4
    x = torch.randn(2, 3, 64, 64)
    sp = model(x)["fine"]["spatial"]
    assert sp.shape == (2, 6, 16, 16)
    _, patches, grid = model.tokens(x)
    y = model.spatial_heads["fine"](patches).transpose(1, 2).reshape(2, 6 * 4, *grid)  # [B, C r², 8, 8]
    for i in range(2):
        for j in range(2):  # cell (i, j) of every token's block is head output channel c * 4 + i * 2 + j
            assert torch.allclose(sp[:, :, i::2, j::2], y[:, i * 2 + j::4], atol=1e-6)
    plain = AgglomModel(tiny_cfg(**{"heads.spatial": head}), [spec], in_chans=3)
    assert plain.spatial_heads["fine"](torch.randn(1, 3, 32)).shape[-1] == 6
    with pytest.raises(ConfigError, match="heads.spatial_upsample"):
        from agglom.config.load import load_config

        load_config(Recipe, ["heads.spatial_upsample=0"])
