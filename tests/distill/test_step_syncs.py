"""The training step without host syncs (issue 16): the task's forward (teacher targets, normalisers, heads, losses,
group objectives) never reads a tensor back to the host once the normalisers are fitted, and the fused paths that
made that possible compute what the straightforward ones did."""
import sys
from pathlib import Path

import pytest
import torch

import agglom
from agglom.model.normalisers import NORMALISERS, build_normaliser
from agglom.objective.groups import build_group_objective

AGGLOM_DIR = str(Path(agglom.__file__).parent)
SYNCS = ("__bool__", "item", "tolist", "__int__", "__float__")


@pytest.mark.parametrize("name", list(NORMALISERS))
def test_spatial_paths_equal_the_channel_last_ones(name):
    torch.manual_seed(0)
    a, b = build_normaliser(name, 8, momentum=0.1), build_normaliser(name, 8, momentum=0.1)
    x = torch.randn(3, 8, 5, 4) * torch.linspace(0.5, 4, 8).view(1, 8, 1, 1) + 2.0
    tokens = x.flatten(2).transpose(1, 2)  # [B, hw, C]
    for step in range(3):  # the first call fits, the next ones track
        a.update(tokens + step)
        b.update_spatial(x + step)
    for buf in a.state_dict():
        torch.testing.assert_close(a.state_dict()[buf], b.state_dict()[buf], rtol=1e-5, atol=1e-6)
    straight = a(tokens).transpose(1, 2).reshape(x.shape)
    fused = a.forward_spatial(x)
    if name in ("none", "zscore"):  # element-wise maths, broadcast: equal bit for bit
        assert torch.equal(straight, fused)
    torch.testing.assert_close(fused, straight, rtol=1e-5, atol=1e-5)
    back = a.inverse(a(tokens)).transpose(1, 2).reshape(x.shape)
    torch.testing.assert_close(a.inverse_spatial(fused), back, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(a.inverse_spatial(fused), x, rtol=1e-4, atol=1e-4)


def test_a_loaded_unfitted_state_is_not_taken_for_fitted():
    fitted, fresh = build_normaliser("zscore", 4), build_normaliser("zscore", 4)
    fitted.update(torch.randn(16, 4) * 3 + 1)
    assert fitted.is_fitted() and not fresh.is_fitted()
    fitted.load_state_dict(fresh.state_dict())  # e.g. a checkpoint written before the stats pass
    assert not fitted.is_fitted()
    fresh.load_state_dict(build_normaliser("zscore", 4).state_dict())
    x = torch.randn(16, 4) * 5 - 2
    fresh.update(x)  # unfitted: the first update fits
    torch.testing.assert_close(fresh.mean, x.mean(0))


@pytest.mark.parametrize("name", ["balanced", "variance", "gap", "excess", "catchup", "groupdro"])
def test_a_batch_without_parity_groups_falls_back_to_the_utility(name):
    """Group 2 is `unknown` and excluded from parity: a batch of it alone has no parity group, so the loss is the
    utility and GroupDRO's state stays where it was (the branch a host sync used to take)."""
    obj = build_group_objective({"group": name, "lam": 1.0, "groupdro_eta": 1.0}, 3, unknown_index=2)
    loss = torch.tensor([4.0, 6.0], requires_grad=True)
    before = {k: v.clone() for k, v in obj.state_dict().items()}
    out, terms = obj(loss, torch.tensor([2, 2]))
    assert out.item() == pytest.approx(5.0) and terms["parity"].item() == pytest.approx(0.0)
    out.backward()
    torch.testing.assert_close(loss.grad, torch.tensor([0.5, 0.5]))
    for k, v in obj.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.isnan(terms["group/0"]) and terms["group/2"].item() == pytest.approx(5.0)


def test_out_of_range_groups_still_fail_clearly():
    obj = build_group_objective({"group": "erm"}, 2)
    with pytest.raises(ValueError, match=r"group indices must lie in \[0, 2\); got min 0, max 5"):
        obj(torch.ones(2), torch.tensor([0, 5]))


class SyncCounter:
    """Counts host reads of tensors (``bool``, ``item``, ``tolist``, ``int``, ``float``) made from agglom's own code
    while ``on`` (libraries' own calls are theirs to answer for)."""

    def __init__(self, monkeypatch) -> None:
        self.on, self.calls = False, []
        for meth in SYNCS:
            real = getattr(torch.Tensor, meth)
            monkeypatch.setattr(torch.Tensor, meth, self._wrap(meth, real))

    def _wrap(self, meth, real):
        def counted(t, *args, **kwargs):
            caller = sys._getframe(1)
            if self.on and caller.f_code.co_filename.startswith(AGGLOM_DIR):
                self.calls.append(f"{meth} at {Path(caller.f_code.co_filename).name}:{caller.f_lineno}")
            return real(t, *args, **kwargs)
        return counted


@pytest.mark.parametrize("over", [
    {"objective.group": "excess", "objective.lam": "1"},
    {"objective.group": "groupdro", "objective.group_scope": "sample", "objective.teacher_balance": "loss_scale",
     "objective.teacher_drop": "0.3"},
])
def test_the_task_step_reads_nothing_back_to_the_host(tiny_train_args, monkeypatch, over):
    from agglom.cli import main
    from agglom.distill.task import AgglomTask

    counter, steps = SyncCounter(monkeypatch), []
    real_forward = AgglomTask.forward

    def instrumented(self, batch):  # the real forward, counted from the second training step on
        counter.on = self.training and len(steps) >= 1
        try:
            return real_forward(self, batch)
        finally:
            counter.on = False
            steps.append(self.training)

    monkeypatch.setattr(AgglomTask, "forward", instrumented)
    args = tiny_train_args("syncs", steps=4, **{"teachers": "[{name: tiny-clip}, {name: tiny-sam}]", **over})
    assert main(["train", *args]) == 0
    assert sum(steps) >= 4
    assert counter.calls == []
