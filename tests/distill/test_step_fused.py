"""The step's fused paths against the straightforward ones (issue 46): the same losses and gradients to float
rounding. Batched summary heads (every registered head), the hand-differentiated cosine + smooth-L1 loss, zero-weight
terms, the normalisers' two-pass statistics and token-major output (every registered normaliser), every teacher's
group objective in one pass (every registered objective), and the whole task step."""
from typing import Any, Dict, List

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

import teachers as zoo
from agglom.config.schema import Recipe
from agglom.distill.task import AgglomTask, teacher_spec
from agglom.model import HEADS, NORMALISERS, AgglomModel, TeacherSpec, build_normaliser
from agglom.model.agglomerator import module_key
from agglom.objective.columns import per_teacher
from agglom.objective.groups import GROUP_OBJECTIVES, build_group_objective
from agglom.objective.losses import distillation_losses, spatial_loss, summary_loss
from agglom.objective.routing import apply_routing

CLOSE = dict(rtol=1e-4, atol=1e-5)  # float32 (torch.testing's atol), sums taken in another order


# --------------------------------------------------------------------------- the straightforward paths
def ref_summary_loss(p, t, cw, beta):
    p, t = p.float(), t.float()
    loss = 1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-6)
    return loss if cw == 1.0 else cw * loss + (1.0 - cw) * F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(-1)


def ref_spatial_loss(pred, target, cw, beta, granularity):
    p, t = pred.float().flatten(2), target.float().flatten(2)
    if granularity == "image":
        p, t = p.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
    cos = 1.0 - F.cosine_similarity(p, t, dim=1, eps=1e-6)
    if cw == 1.0:
        return cos.mean(-1)
    return (cw * cos + (1.0 - cw) * F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(1)).mean(-1)


def ref_distillation_losses(preds, targets, names, cfg):
    cols = []
    for name in names:
        p, t, total = preds[name], targets[name], None
        if "summary" in p and "summary" in t:
            total = cfg.summary_weight * ref_summary_loss(p["summary"], t["summary"], cfg.summary_cos,
                                                          cfg.smooth_l1_beta)
        if "spatial" in p and "spatial" in t:
            lp = cfg.spatial_weight * ref_spatial_loss(p["spatial"], t["spatial"], cfg.spatial_cos, cfg.smooth_l1_beta,
                                                       cfg.granularity)
            total = lp if total is None else total + lp
        cols.append(total)
    return torch.stack(cols, 1)


def ref_normalise(model: AgglomModel, name: str, summary, spatial) -> Dict[str, torch.Tensor]:
    """normalise_targets(update=True) as it was: torch.var_mean's moments, the map normalised in its own layout."""
    out = {}
    norm = model.summary_norms[module_key(name)]
    norm.update(summary)
    out["summary"] = norm(summary.float())
    norm = model.spatial_norms[module_key(name)]
    if type(norm).__name__ == "ZScore" and norm.momentum:
        var, mean = torch.var_mean(spatial, dim=(0, 2, 3), correction=0)
        norm._blend(mean, var)
    shape = (1, -1, 1, 1)
    if type(norm).__name__ == "ZScore":
        out["spatial"] = (spatial - norm.mean.view(shape)) / norm.std().view(shape)
    else:
        out["spatial"] = norm.forward_spatial(spatial)
    return out


def ref_objective(objectives, routed, group, mask):
    """The task's per-teacher scope as it was: each teacher's objective on its own column."""
    losses, parts = [], []
    for i, objective in enumerate(objectives):
        loss, terms = objective(routed[:, i], group, weight=mask[:, i])
        losses.append(loss)
        parts.append(terms)
    terms = {k: torch.stack([p[k] for p in parts if k in p]).nanmean() for k in set().union(*parts)}
    return torch.stack(losses), terms, [p["utility"] for p in parts]


def ref_step(task: AgglomTask, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
    image, group = batch["image"], batch["group"]
    with torch.no_grad():
        raw = task.raw_targets(batch, image)
        targets = {n: ref_normalise(task.model, n, raw[n]["summary"], raw[n]["spatial"]) for n in raw}
    task.model.batch_heads = False
    loss_bt = ref_distillation_losses(task.model(image), targets, task.names, task.cfg.objective)
    balance = task.objective["balance"]
    mask = balance.mask(loss_bt.shape[0], loss_bt.device)
    routed = apply_routing(loss_bt, group, task.routing)
    losses, terms, utility = ref_objective(task.objective["groups"], routed, group, mask)
    task.objective["tracker"].update(loss_bt.detach(), mask, group)
    return {"loss": balance.combine(losses, mask.sum(0) > 0), **task._named(terms),
            **{f"teacher/{n}": u for n, u in zip(task.keys, utility)}}


# --------------------------------------------------------------------------- losses
@pytest.mark.parametrize("cw", [1.0, 0.9, 0.5, 0.0])
@pytest.mark.parametrize("beta", [1.0, 0.25, 0.0])
def test_summary_loss_matches_cosine_similarity_and_smooth_l1(cw, beta):
    torch.manual_seed(0)
    p, t = torch.randn(6, 10, requires_grad=True), torch.randn(6, 10)
    w = torch.rand(6)
    got, want = summary_loss(p, t, cw, beta), ref_summary_loss(p, t, cw, beta)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad((got * w).sum(), p)[0],
                               torch.autograd.grad((want * w).sum(), p)[0])


@pytest.mark.parametrize("cw", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("granularity", ["token", "image"])
@pytest.mark.parametrize("layout", ["token-major", "channel-first"])
def test_spatial_loss_matches_the_straightforward_loss(cw, granularity, layout):
    """A head's map comes token-major ([B, N, C] in memory), a pooled or cached one channel-first: both agree."""
    torch.manual_seed(1)
    base = torch.randn(3, 16, 6, requires_grad=True)
    pred = base.transpose(1, 2).reshape(3, 6, 4, 4)
    if layout == "channel-first":
        pred = pred.contiguous()
    target = torch.randn(3, 6, 4, 4)
    w = torch.rand(3)
    got, want = spatial_loss(pred, target, cw, 0.5, granularity), ref_spatial_loss(pred, target, cw, 0.5, granularity)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad((got * w).sum(), base)[0],
                               torch.autograd.grad((want * w).sum(), base)[0])


def test_a_zero_prediction_and_a_target_with_gradients_stay_finite_and_agree():
    p = torch.zeros(2, 5, requires_grad=True)
    t = torch.randn(2, 5)
    grad = torch.autograd.grad(summary_loss(p, t).sum(), p)[0]
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, torch.autograd.grad(ref_summary_loss(p, t, 1.0, 1.0).sum(), p)[0])
    t = t.requires_grad_()  # not a teacher's target: plain autograd, both sides differentiated
    got = torch.autograd.grad(summary_loss(p + 1, t, 0.5).sum(), t)[0]
    torch.testing.assert_close(got, torch.autograd.grad(ref_summary_loss(p + 1, t, 0.5, 1.0).sum(), t)[0])


@pytest.mark.parametrize("zero", ["summary_weight", "spatial_weight"])
def test_a_term_with_weight_zero_is_not_computed_and_its_head_still_gets_a_zero_gradient(zero):
    cfg = OmegaConf.structured(Recipe).objective
    cfg[zero] = 0.0
    torch.manual_seed(2)
    preds = {"a": {"summary": torch.randn(4, 5, requires_grad=True),
                   "spatial": torch.randn(4, 3, 2, 2, requires_grad=True)}}
    targets = {"a": {"summary": torch.randn(4, 5), "spatial": torch.randn(4, 3, 2, 2)}}
    loss, parts = distillation_losses(preds, targets, ["a"], cfg)
    kept = "spatial" if zero == "summary_weight" else "summary"
    assert set(parts) == {f"a/{kept}"} and loss.shape == (4, 1)
    torch.testing.assert_close(loss, ref_distillation_losses(preds, targets, ["a"], cfg))
    loss.sum().backward()
    dropped = "summary" if zero == "summary_weight" else "spatial"
    assert torch.equal(preds["a"][dropped].grad, torch.zeros_like(preds["a"][dropped]))


# --------------------------------------------------------------------------- heads
def _model(head: str, summary_tokens: bool) -> AgglomModel:
    cfg = OmegaConf.structured(Recipe)
    cfg.student.model_args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    cfg.heads.summary = cfg.heads.spatial = head
    cfg.student.summary_tokens = summary_tokens
    specs = [TeacherSpec("a", 24, 16, (4, 4)), TeacherSpec("b", 8, 12, (8, 8)), TeacherSpec("c", 10, 6, (16, 16)),
             TeacherSpec("d", 6, 4, (8, 8), summary=False)]
    torch.manual_seed(0)
    return AgglomModel(cfg, specs, in_chans=3)


def _outputs_and_grads(model: AgglomModel, x: torch.Tensor):
    model.zero_grad(set_to_none=True)
    out = model(x)
    torch.manual_seed(3)
    sum((v * torch.randn_like(v)).sum() for o in out.values() for v in o.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {n: {k: v.detach() for k, v in o.items()} for n, o in out.items()}, grads


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("summary_tokens", [True, False])
def test_batched_heads_match_one_call_per_head(head, summary_tokens):
    model = _model(head, summary_tokens)
    x = torch.randn(3, 3, 64, 64)
    batched = _outputs_and_grads(model, x)
    model.batch_heads = False
    single = _outputs_and_grads(model, x)
    torch.testing.assert_close(batched[0], single[0], **CLOSE)
    assert batched[1].keys() == single[1].keys()
    torch.testing.assert_close(batched[1], single[1], **CLOSE)
    model.batch_heads = True
    for kind in ("summary", "spatial"):  # attention heads run one call per head
        assert (model._runners[kind][1] is not None) == (head != "attn"), kind
    with torch.no_grad():
        adapters = torch.cat([single[0][n]["summary"] for n in "abc"], 1)
        torch.testing.assert_close(model.features(x, "adapters"), adapters, **CLOSE)


def test_zero3_partitioned_heads_run_one_module_call_each():
    """DeepSpeed ZeRO-3 gathers a partitioned parameter (it carries ``ds_id``) only in its module's own call: such
    heads never run batched, even after a batched first call."""
    model = _model("mlp", True)
    x = torch.randn(2, 3, 64, 64)
    model(x)
    assert all(model._runners[k][1] is not None for k in ("summary", "spatial"))
    calls = []
    for heads in (model.summary_heads, model.spatial_heads):
        for h in heads.values():
            for p in h.parameters():
                p.ds_id = 0
            h.register_forward_hook(lambda *a: calls.append(1))
    model(x)
    assert len(calls) == 3 + 4  # every head's own module call


def test_batching_leaves_the_parameters_and_their_state_dict_as_they_were():
    """The per-teacher heads own their parameters: keys, order and values are those of the modules."""
    model = _model("mlp", True)
    keys = [k for k in model.state_dict() if k.startswith(("summary_heads.", "spatial_heads."))]
    assert keys[:4] == ["summary_heads.a.net.0.weight", "summary_heads.a.net.0.bias", "summary_heads.a.net.1.weight",
                        "summary_heads.a.net.1.bias"]
    assert len(keys) == 7 * 6  # 3 summary + 4 spatial heads, 6 tensors each
    other = _model("mlp", True)
    other.batch_heads = False
    other.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), other(x), **CLOSE)


# --------------------------------------------------------------------------- normalisers
@pytest.mark.parametrize("name", sorted(NORMALISERS))
def test_normalisers_map_a_dense_map_as_they_map_its_tokens(name):
    """Two-pass moments (zscore's EMA) and the map written token-major: the values of the channel-last path."""
    torch.manual_seed(4)
    a, b = build_normaliser(name, 6, momentum=0.5), build_normaliser(name, 6, momentum=0.5)
    fit = torch.randn(200, 6) * 3 + 1
    a.fit(fit)
    b.fit(fit)
    x = torch.randn(4, 6, 5, 5) * 2 - 1
    tokens = x.flatten(2).transpose(1, 2)
    a.update_spatial(x)
    b.update(tokens)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), **CLOSE)
    out = a.forward_spatial(x)
    assert out.shape == x.shape and out.flatten(2).transpose(1, 2).is_contiguous() == (name == "zscore")
    torch.testing.assert_close(out.flatten(2).transpose(1, 2), b(tokens), **CLOSE)


# --------------------------------------------------------------------------- group objectives
def _objectives(name: str, per_teacher_refs: bool) -> List[torch.nn.Module]:
    cfg = {"group": name, "lam": 0.7, "groupdro_eta": 0.3, "groupdro_size_adjust": 0.5}
    refs = [[0.4, None, 0.9, 0.2], [None, 0.1, 0.5, 0.3], [0.2, 0.2, 0.2, 0.2]] if per_teacher_refs else [None] * 3
    return [build_group_objective(cfg, 4, unknown_index=3, reference=r) for r in refs]


@pytest.mark.parametrize("name", sorted(GROUP_OBJECTIVES))
@pytest.mark.parametrize("refs", [True, False])
def test_every_teachers_objective_in_one_pass_matches_one_call_per_teacher(name, refs):
    """Group 2 absent from the batch, teacher 1 dropped on half the samples: losses, gradients, logged terms and
    GroupDRO's state are those of calling each teacher's objective on its column."""
    torch.manual_seed(5)
    group = torch.tensor([0, 0, 1, 1, 1, 3, 0, 1])
    mask = torch.ones(8, 3)
    mask[::2, 1] = 0
    fused, single = _objectives(name, refs), _objectives(name, refs)
    loss = torch.rand(8, 3, requires_grad=True)
    for _ in range(2):  # GroupDRO's second step starts from the first one's weights
        cols = per_teacher(fused, loss, group, mask)
        losses, terms, utility = ref_objective(single, loss, group, mask)
        torch.testing.assert_close(cols.loss, losses, **CLOSE)
        torch.testing.assert_close(cols.utility, torch.stack(utility), **CLOSE)
        assert cols.terms.keys() == terms.keys()
        torch.testing.assert_close(cols.terms, terms, equal_nan=True, **CLOSE)
        w = torch.tensor([1.0, 2.0, 0.5])
        torch.testing.assert_close(torch.autograd.grad((cols.loss * w).sum(), loss)[0],
                                   torch.autograd.grad((losses * w).sum(), loss)[0], **CLOSE)
    for a, b in zip(fused, single):
        torch.testing.assert_close(a.state_dict(), b.state_dict(), **CLOSE)


# --------------------------------------------------------------------------- the whole step
def _task(head: str, normaliser: str, group: str) -> AgglomTask:
    cfg = OmegaConf.structured(Recipe)
    cfg = OmegaConf.merge(cfg, {"teachers": [{"name": "tiny-clip"}, {"name": "tiny-sam", "weight": 2.0}]})
    cfg.data.image_size = 32
    cfg.student.model_args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
    cfg.heads.summary = cfg.heads.spatial = head
    cfg.heads.normaliser, cfg.heads.zscore_momentum = normaliser, 0.3
    cfg.objective.group, cfg.objective.lam, cfg.objective.summary_cos = group, 0.5, 0.6
    torch.manual_seed(0)
    ts = {e.name: zoo.build_teacher(e.name, input_mean=[0.5] * 3, input_std=[0.5] * 3) for e in cfg.teachers}
    task = AgglomTask(cfg, [teacher_spec(e, ts[e.name]) for e in cfg.teachers], ts, ["A", "B", "unknown"], in_chans=3)
    task.fit_normalisers([STATS])
    return task.train()


STATS = {"image": torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(2)),
         "key": [str(i) for i in range(16)]}
BATCH = {"image": torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
         "group": torch.tensor([0, 0, 0, 0, 0, 1, 1, 2]), "key": [str(i) for i in range(8)]}


@pytest.mark.parametrize("head", sorted(HEADS))
@pytest.mark.parametrize("normaliser", sorted(NORMALISERS))
@pytest.mark.parametrize("group", ["erm", "groupdro"])
def test_the_task_step_matches_the_straightforward_step(head, normaliser, group):
    """Targets, heads, losses and objective as one step: loss, every logged term, every gradient and the state the
    step updates (normalisers, GroupDRO weights, tracker) as the straightforward step computes them."""
    fused, plain = _task(head, normaliser, group), _task(head, normaliser, group)
    got, want = fused(BATCH), ref_step(plain, BATCH)
    assert got.keys() == want.keys()
    torch.testing.assert_close(got, want, equal_nan=True, **CLOSE)
    got["loss"].backward()
    want["loss"].backward()
    grads = {n: p.grad for n, p in fused.model.named_parameters()}
    assert all(g is not None for g in grads.values())
    torch.testing.assert_close(grads, {n: p.grad for n, p in plain.model.named_parameters()}, **CLOSE)
    torch.testing.assert_close(fused.model.state_dict(), plain.model.state_dict(), **CLOSE)
    torch.testing.assert_close(fused.objective.state_dict(), plain.objective.state_dict(), **CLOSE)
