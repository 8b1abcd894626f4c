"""Several teachers' adapter heads of one kind run as one: stacked weights, batched matmuls.

Each teacher's head stays its own module and the owner of its parameters (state_dict, checkpoints, exact resume,
export and the optimiser's parameter order are those of the per-teacher modules); a batched run reads their
weights, stacks them (``[T, ...]``) and runs every head's layers as one ``bmm`` each, with the same values and
gradients to float rounding (``tests/distill/test_step_fused.py``). The output projections, whose widths differ between
teachers, run per teacher.

Used for the summary heads (:meth:`agglom.model.agglomerator.AgglomModel.summaries`): one token per teacher and
sample, so each head's own call is a handful of tiny operations and their number, not their arithmetic, is the cost.
The spatial heads all read the same ``B x N`` patch tokens: they share their first LayerNorm's normalisation
(:data:`SHARED`; each head's scale and shift folded into the Linear after it) and run their matmuls per teacher.
Stacking their matmuls as well (a ``bmm``, or one wide matmul over the concatenated first layers) measured no
faster on 2 CPU cores (docs/benchmarks.md, "What the step avoids").

A head class runs batched when :data:`BATCHED` (:data:`SHARED`) has a runner for it and every head has the same
shape but for the output width (:func:`batch_key`); DeepSpeed ZeRO-3's partitioned parameters (gathered only by the
module's own call) never do.
"""
from __future__ import annotations

from typing import Callable, Dict, Hashable, List, Optional, Sequence, Type

import torch
import torch.nn.functional as F
from torch import nn

from agglom.model.heads import MLPHead, ResMLPHead

Runner = Callable[[Sequence[nn.Module], torch.Tensor], List[torch.Tensor]]


def _stack(mods: Sequence[nn.Module], name: str) -> torch.Tensor:
    return torch.stack([getattr(m, name) for m in mods])


def _layer_norm(x: torch.Tensor, norms: Sequence[nn.LayerNorm]) -> torch.Tensor:
    """``[T, M, D]``: teacher t's LayerNorm on row t (one normalisation, then each teacher's affine)."""
    n0 = norms[0]
    xh = F.layer_norm(x, n0.normalized_shape, None, None, n0.eps)
    return torch.addcmul(_stack(norms, "bias").unsqueeze(1), xh, _stack(norms, "weight").unsqueeze(1))


def _linear(x: torch.Tensor, linears: Sequence[nn.Linear]) -> torch.Tensor:
    """``[T, M, in] -> [T, M, out]``: teacher t's Linear on row t, one ``baddbmm``."""
    return torch.baddbmm(_stack(linears, "bias").unsqueeze(1), x, _stack(linears, "weight").transpose(1, 2))


def _linear_each(x: torch.Tensor, linears: Sequence[nn.Linear]) -> List[torch.Tensor]:
    """The output projections (widths differ by teacher): ``[T, M, in] -> [M, out_t]`` each."""
    return [F.linear(xt, lin.weight, lin.bias) for xt, lin in zip(x.unbind(0), linears)]


def run_mlp(heads: Sequence[nn.Module], x: torch.Tensor) -> List[torch.Tensor]:
    """:class:`~agglom.model.heads.MLPHead` s on ``x`` [T, M, D] (row t for head t)."""
    nets = [h.net for h in heads]
    hidden = _linear(_layer_norm(x, [n[0] for n in nets]), [n[1] for n in nets])
    return _linear_each(F.gelu(hidden, approximate=nets[0][2].approximate), [n[3] for n in nets])


def run_resmlp(heads: Sequence[nn.Module], x: torch.Tensor) -> List[torch.Tensor]:
    """:class:`~agglom.model.heads.ResMLPHead` s on ``x`` [T, M, D] (row t for head t)."""
    for i in range(len(heads[0].blocks)):
        blocks = [h.blocks[i] for h in heads]
        hidden = _linear(_layer_norm(x, [b.norm for b in blocks]), [b.fc1 for b in blocks])
        x = x + _linear(F.gelu(hidden, approximate=blocks[0].act.approximate), [b.fc2 for b in blocks])
    return _linear_each(_layer_norm(x, [h.norm for h in heads]), [h.proj for h in heads])


#: head class -> its batched runner (a registered head without one runs per teacher)
BATCHED: Dict[Type[nn.Module], Runner] = {MLPHead: run_mlp, ResMLPHead: run_resmlp}


def _folded(x_hat: torch.Tensor, norm: nn.LayerNorm, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))`` from the affine-free ``x_hat``: the norm's scale and shift folded into the linear's
    weight (``W diag(g)``) and bias (``b + W beta``), so that one normalisation serves every head."""
    return F.linear(x_hat, linear.weight * norm.weight, torch.addmv(linear.bias, linear.weight, norm.bias))


def _normalised(heads: Sequence[nn.Module], x: torch.Tensor,
                first_norm: Callable[[nn.Module], nn.LayerNorm]) -> torch.Tensor:
    """``x`` through the first head's first LayerNorm without its affine (the heads' affines are folded later)."""
    n0 = first_norm(heads[0])
    return F.layer_norm(x, n0.normalized_shape, None, None, n0.eps)


def shared_mlp(heads: Sequence[nn.Module], x: torch.Tensor) -> List[torch.Tensor]:
    """:class:`~agglom.model.heads.MLPHead` s on one input ``x`` [..., D]: its LayerNorm computed once."""
    x_hat = _normalised(heads, x, lambda h: h.net[0])
    return [h.net[3](h.net[2](_folded(x_hat, h.net[0], h.net[1]))) for h in heads]


def shared_resmlp(heads: Sequence[nn.Module], x: torch.Tensor) -> List[torch.Tensor]:
    """:class:`~agglom.model.heads.ResMLPHead` s on one input ``x`` [..., D]: the first block's LayerNorm computed
    once; the rest of each head as its own modules."""
    x_hat = _normalised(heads, x, lambda h: h.blocks[0].norm)
    outs = []
    for h in heads:
        b = h.blocks[0]
        y = x + b.fc2(b.act(_folded(x_hat, b.norm, b.fc1)))
        outs.append(h.proj(h.norm(h.blocks[1:](y))))
    return outs


#: head class -> its runner for heads that read the same input (the spatial heads: every teacher's from the same
#: patch tokens)
SHARED: Dict[Type[nn.Module], Runner] = {MLPHead: shared_mlp, ResMLPHead: shared_resmlp}


def shared_runner(heads: Sequence[nn.Module]) -> Optional[Runner]:
    """The runner for ``heads`` reading one input when two or more can share its first LayerNorm (same class, input
    width and eps; not ZeRO-3 partitioned), else None."""
    if len(heads) < 2 or type(heads[0]) not in SHARED or any(type(h) is not type(heads[0]) for h in heads):
        return None
    norms = [next(m for m in h.modules() if isinstance(m, nn.LayerNorm)) for h in heads]
    if any((n.normalized_shape, n.eps, n.elementwise_affine) != (norms[0].normalized_shape, norms[0].eps, True)
           for n in norms) or any(hasattr(p, "ds_id") for h in heads for p in h.parameters()):
        return None
    return SHARED[type(heads[0])]


def batch_key(head: nn.Module) -> Optional[Hashable]:
    """What must be equal for heads to run batched: the class, and every parameter's shape and every LayerNorm's eps
    and GELU's form but the last Linear's (the output width); None where the head cannot run batched."""
    if type(head) not in BATCHED or any(hasattr(p, "ds_id") for p in head.parameters()):  # ZeRO-3 partitioned
        return None
    params = list(head.named_parameters())[:-2]  # all but the output projection's weight and bias
    return (type(head), tuple((n, tuple(p.shape)) for n, p in params),
            tuple((type(m).__name__, getattr(m, "eps", None), getattr(m, "approximate", None)) for m in head.modules()))


def batched_runner(heads: Sequence[nn.Module]) -> Optional[Runner]:
    """The runner for ``heads`` when two or more can run as one (:func:`batch_key`), else None."""
    if len(heads) < 2:
        return None
    key = batch_key(heads[0])
    if key is None or any(batch_key(h) != key for h in heads[1:]):
        return None
    return BATCHED[type(heads[0])]
