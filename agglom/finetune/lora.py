"""LoRA for `agglom finetune finetune.method=lora`: low-rank adapters on the encoder's attention projections.

``nn.Linear`` projections (timm, SAM, transformers, open_clip's timm trunks) get Hugging Face ``peft``'s LoRA layers:
the maintained reference implementation (init, scaling, dropout, merge), injected in place into any ``nn.Module``
(:class:`peft.tuners.lora.LoraModel`, no ``PeftModel`` wrapper), and merging gives back the exact base module
classes, so the exported teacher is a plain encoder in its family's own format. timm and open_clip have no LoRA
hooks of their own.

``nn.MultiheadAttention`` (open_clip's own ViT: packed q/k/v ``in_proj_weight`` + ``out_proj``) is adapted with
torch's own ``torch.nn.utils.parametrize`` instead: ``W + (alpha / r) B A`` on both weights, peft's initialisation
(A Kaiming-uniform, B zero). peft's MultiheadAttention layer merges the adapters into the base weights before
every forward and subtracts them after, so the "frozen" base drifts by float rounding at each step (measured:
3.7e-8 after 6 steps on tiny-clip); a parametrization leaves the base bit-exact. Adapter dropout does not apply to
these weight-space adapters (as in peft's MultiheadAttention layer).

Every base weight of the module is frozen; after training :func:`merge` folds the adapters into the base weights
and removes them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from agglom.config.load import ConfigError

# per family: candidate module-name suffixes (peft matches a name equal to, or ending in ".<suffix>"); the ones the
# model has are used. q/k/v and the output projection of every attention block.
DEFAULT_TARGETS: Dict[str, Tuple[str, ...]] = {
    "timm": ("attn.qkv", "attn.proj"),
    "agglom": ("attn.qkv", "attn.proj"),
    "sam": ("attn.qkv", "attn.proj"),
    # open_clip's own ViT: nn.MultiheadAttention (its packed q/k/v in_proj_weight and out_proj, parametrized);
    # a timm trunk inside open_clip (BiomedCLIP): its attn.qkv / attn.proj linears
    "open_clip": ("attn", "attn.qkv", "attn.proj"),
    # transformers ViTs: DINOv2/DINOv3 (q/k/v/o_proj), SigLIP/CLIP (q/k/v/out_proj), older ViT/DINOv2 naming
    "transformers": ("q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "attention.query", "attention.key",
                     "attention.value", "attention.output.dense"),
}
ADAPTABLE = (nn.Linear, nn.MultiheadAttention)


@dataclass
class LoraInfo:
    """What the card and finetune.json record about the adapters."""

    rank: int
    alpha: float
    dropout: float
    target_modules: List[str]
    adapted: int  # how many modules carry adapters
    tuner: Any = field(default=None, repr=False)  # the peft LoraModel (merges the adapters into the base)
    model: Any = field(default=None, repr=False)  # the adapted module
    parametrized: List[str] = field(default_factory=list)  # MultiheadAttention modules with weight-space adapters

    def record(self) -> Dict[str, Any]:
        return {"rank": self.rank, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": list(self.target_modules), "adapted_modules": self.adapted}


def _matches(name: str, suffix: str) -> bool:
    return name == suffix or name.endswith("." + suffix)


def resolve_targets(model: nn.Module, family: str, given: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(target suffixes, the full names of the modules they select): ``given`` (finetune.lora_targets), each of
    which must name at least one Linear or MultiheadAttention module, else the family's defaults that the model
    has. A MultiheadAttention's own out_proj is never selected (peft adapts it through the attention module;
    e.g. SigLIP's pooling head is an nn.MultiheadAttention, left as it is by the default targets)."""
    layers = [n for n, m in model.named_modules() if isinstance(m, ADAPTABLE)]
    # a MultiheadAttention's out_proj is adapted through the attention module itself (peft's MHA layer)
    mha = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    layers = [n for n in layers if not any(n == f"{a}.out_proj" for a in mha)]
    if given:
        for t in given:
            if not any(_matches(n, t) for n in layers):
                raise ConfigError(f"finetune.lora_targets: {t!r} names no Linear or MultiheadAttention module of this "
                                  f"{family} encoder; e.g. {', '.join(sorted({n.split('.')[-1] for n in layers})[:12])}")
        targets = list(given)
    else:
        targets = [t for t in DEFAULT_TARGETS.get(family, ()) if any(_matches(n, t) for n in layers)]
        if not targets:
            raise ConfigError(f"finetune.method=lora: this {family} encoder has no attention projections to adapt "
                              f"(looked for {', '.join(DEFAULT_TARGETS.get(family, ()))}); name them with "
                              "finetune.lora_targets=[...]")
    return targets, [n for n in layers if any(_matches(n, t) for t in targets)]


class LowRankDelta(nn.Module):
    """A parametrization ``W -> W + scale * B @ A`` (B zero at the start, so the adapted module starts as the base)."""

    def __init__(self, out_features: int, in_features: int, rank: int, scale: float) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # peft's (and nn.Linear's) initialisation of A
        self.scale = float(scale)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.scale * (self.lora_B @ self.lora_A).to(weight.dtype)


def _parametrize_mha(mha: nn.MultiheadAttention, rank: int, scale: float) -> None:
    for owner, name in ((mha, "in_proj_weight"), (mha.out_proj, "weight")):
        w = getattr(owner, name)
        parametrize.register_parametrization(owner, name, LowRankDelta(w.shape[0], w.shape[1], rank, scale))


def apply_lora(model: nn.Module, family: str, spec: Any) -> LoraInfo:
    """Inject adapters into ``model`` in place (its base weights frozen, the adapters trainable)."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    targets, names = resolve_targets(model, family, list(spec.lora_targets or []))
    modules = dict(model.named_modules())
    mha = [n for n in names if isinstance(modules[n], nn.MultiheadAttention)]
    linear = [n for n in names if n not in mha]
    rank, alpha = int(spec.lora_rank), float(spec.lora_alpha)
    tuner = None
    if linear:  # peft gets the full module names (a suffix would also catch what resolve_targets left out)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=float(spec.lora_dropout), target_modules=linear,
                            bias="none")
        tuner = LoraModel(model, config, "default")
    for n in mha:
        _parametrize_mha(modules[n], rank, alpha / rank)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return LoraInfo(rank, alpha, float(spec.lora_dropout), targets, len(names), tuner, model, mha)


def merge(info: LoraInfo) -> nn.Module:
    """Fold the adapters into the base weights and remove them: the module is its family's plain encoder again."""
    model = info.tuner.merge_and_unload() if info.tuner is not None else info.model
    modules = dict(model.named_modules())
    for n in info.parametrized:
        mha = modules[n]
        for owner, name in ((mha, "in_proj_weight"), (mha.out_proj, "weight")):
            parametrize.remove_parametrizations(owner, name, leave_parametrized=True)
    return model


def count_params(model: nn.Module) -> Dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


__all__ = ["DEFAULT_TARGETS", "LoraInfo", "resolve_targets", "apply_lora", "merge", "count_params"]
