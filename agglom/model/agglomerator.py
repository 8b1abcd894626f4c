"""The trainable module: student + per-teacher heads + per-teacher normalisers (one ModuleDict).

Teachers are *not* inside it: it is what DDP/DeepSpeed wrap, what checkpoints hold and what export splits
into a timm folder (the student) and an adapter pack (heads + normalisers).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from agglom.model.batched_heads import Runner, batched_runner, shared_runner
from agglom.model.heads import build_head
from agglom.model.normalisers import build_normaliser
from agglom.model.student import build_student, student_tokens
from agglom.phases import OFF, PhaseTimer


@dataclass
class TeacherSpec:
    """What the student must reproduce for one teacher (from the teacher, or a cache manifest)."""

    name: str
    summary_dim: int
    spatial_dim: int
    grid: Tuple[int, int]
    summary: bool = True
    spatial: bool = True
    digest: str = ""

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "TeacherSpec":
        d = dict(d)
        d["grid"] = tuple(d["grid"])
        return cls(**d)


#: what `features(x, kind)` can return, for probes (eval.features):
#: "summary" = the CLS token; "pooled" = the mean of the patch tokens; "adapters" = every teacher's summary
#: adapter output, concatenated (RADIO's choice: the student's emulation of each teacher's embedding).
FEATURE_KINDS = ("summary", "pooled", "adapters")


def module_key(name: str) -> str:
    """A teacher name as a ModuleDict key (a card may be named by a path such as `cards/x.yaml`)."""
    return name.replace(".", "_")


def to_grid(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """Bring a [B, C, h, w] map to the teacher's grid: area-average when shrinking, bilinear when growing."""
    if tuple(x.shape[-2:]) == tuple(grid):
        return x
    if x.shape[-2] >= grid[0] and x.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(x, grid)
    return F.interpolate(x, size=grid, mode="bilinear", align_corners=False)


class AgglomModel(nn.Module):
    phases: PhaseTimer = OFF  # the step's phase timer; the training loop sets its own (log.phases)
    #: run the heads together where they allow it (agglom/model/batched_heads.py); False: one call per head
    batch_heads: bool = True

    def __init__(self, cfg: Any, specs: List[TeacherSpec], in_chans: int, student: Optional[nn.Module] = None) -> None:
        """`student`: an already-built timm model (e.g. loaded from an export) instead of a new one."""
        super().__init__()
        self.specs = list(specs)
        self.teacher_names = [s.name for s in specs]
        n_tokens = len(specs) if cfg.student.summary_tokens else 0
        self.student = student if student is not None else build_student(cfg.student, cfg.data.image_size, in_chans,
                                                                          n_tokens)
        width = self.student.embed_dim
        # summary token of teacher t: its own register (the last len(specs) prefix tokens) or the CLS token
        self.summary_token_index = {
            s.name: (self.student.num_prefix_tokens - len(specs) + i if n_tokens else 0) for i, s in enumerate(specs)
        }
        self.summary_heads = nn.ModuleDict()
        self.spatial_heads = nn.ModuleDict()
        self.summary_norms = nn.ModuleDict()
        self.spatial_norms = nn.ModuleDict()
        hc = cfg.heads
        self.upsample = int(getattr(hc, "spatial_upsample", 1) or 1)  # an older run's config lacks the key
        for s in specs:
            if s.summary:
                self.summary_heads[module_key(s.name)] = build_head(hc.summary, width, s.summary_dim, hc.hidden)
                self.summary_norms[module_key(s.name)] = build_normaliser(hc.normaliser, s.summary_dim, hc.zscore_momentum)
            if s.spatial:
                self.spatial_heads[module_key(s.name)] = build_head(hc.spatial, width, s.spatial_dim * self.upsample ** 2,
                                                                    hc.hidden)
                self.spatial_norms[module_key(s.name)] = build_normaliser(hc.normaliser, s.spatial_dim, hc.zscore_momentum)
        self._tokens_memo: Optional[tuple] = None  # (batch, its version, tokens): see tokens()
        self._runners: Dict[str, Tuple[List[str], Optional[Runner]]] = {}  # kind -> (head names, runner): _runner()

    def tokens(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
        """The student's (prefix, patch tokens, grid) for ``x``. Evaluated without gradients, the last batch's
        tokens are kept (with a reference to that batch, so it cannot be another one at the same address): the
        evaluation's probe features, dense maps and fidelity pass on one batch then share one backbone forward
        instead of running it three times. Training (or any pass with gradients) always recomputes."""
        if self.training or torch.is_grad_enabled() or x.is_inference():  # an inference tensor has no version
            return student_tokens(self.student, x)
        memo = self._tokens_memo
        if memo is not None and memo[0] is x and memo[1] == x._version:
            return memo[2]
        out = student_tokens(self.student, x)
        self._tokens_memo = (x, x._version, out)
        return out

    def train(self, mode: bool = True) -> "AgglomModel":
        self._tokens_memo = None  # weights may change from here on
        return super().train(mode)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._tokens_memo = None  # new weights: the kept tokens are another model's
        return super().load_state_dict(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        """Per-teacher predictions in *normalised* teacher space: {name: {summary: [B,Ds], spatial: [B,Cs,h,w]}}."""
        prefix, patches, grid = self.tokens(x)
        self.phases.mark("student")  # a no-op unless the loop's log.phases timer is set (agglom.phases)
        summaries = self.summaries(x, prefix, patches)
        spatial = self._spatial_outputs(patches)
        out: Dict[str, Dict[str, torch.Tensor]] = {}
        for s in self.specs:
            pred: Dict[str, torch.Tensor] = {}
            if s.summary:
                pred["summary"] = summaries[s.name]
            if s.spatial:
                y = spatial[s.name]  # [B, N, C]
                y = y.transpose(1, 2).reshape(y.shape[0], -1, grid[0], grid[1])
                if self.upsample > 1:  # [B, C r², h, w] -> [B, C, h r, w r]: each token's r x r block
                    y = F.pixel_shuffle(y, self.upsample)
                pred["spatial"] = to_grid(y, s.grid)
            out[s.name] = pred
        return out

    def summaries(self, x: torch.Tensor, prefix: Optional[torch.Tensor] = None,
                  patches: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Each teacher's summary head output (normalised teacher space), without the spatial heads' cost."""
        if prefix is None or patches is None:
            prefix, patches, _ = self.tokens(x)
        names = [s.name for s in self.specs if s.summary]
        runner = self._runner("summary", names)
        if runner is not None:  # every summary head as one (agglom/model/batched_heads.py)
            tokens = self._summary_tokens(prefix, [self.summary_token_index[n] for n in names])
            return dict(zip(names, runner([self.summary_heads[module_key(n)] for n in names], tokens)))
        out: Dict[str, torch.Tensor] = {}
        for s in self.specs:
            if s.summary:
                head = self.summary_heads[module_key(s.name)]
                tok = prefix[:, self.summary_token_index[s.name]].unsqueeze(1)
                out[s.name] = head(torch.cat([tok, patches], 1) if head.uses_context else tok)[:, 0]
        return out

    def _spatial_outputs(self, patches: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Each teacher's spatial head on the patch tokens, ``[B, N, C]``: their first LayerNorm shared where they
        allow it (agglom/model/batched_heads.py), else one module call per head on one contiguous copy of the
        tokens (rather than one copy by each head's LayerNorm)."""
        names = [s.name for s in self.specs if s.spatial]
        if len(names) > 1:
            patches = patches.contiguous()
        heads = [self.spatial_heads[module_key(n)] for n in names]
        runner = self._runner("spatial", names)
        return dict(zip(names, runner(heads, patches) if runner is not None else [h(patches) for h in heads]))

    def _runner(self, kind: str, names: List[str]) -> Optional[Runner]:
        """The batched runner of the ``kind`` heads of ``names`` (summary: :func:`batched_runner`, spatial:
        :func:`shared_runner`), or None (:attr:`batch_heads` off, fewer than two, or heads that cannot run together);
        their structure is checked once, ZeRO-3 partitioning at every call."""
        if not self.batch_heads or len(names) < 2:
            return None
        heads = self.summary_heads if kind == "summary" else self.spatial_heads
        first = heads[module_key(names[0])]
        if any(hasattr(p, "ds_id") for p in first.parameters()):  # partitioned after the first check
            return None
        cached = self._runners.get(kind)
        if cached is None or cached[0] != names:
            find = batched_runner if kind == "summary" else shared_runner
            cached = self._runners[kind] = (list(names), find([heads[module_key(n)] for n in names]))
        return cached[1]

    @staticmethod
    def _summary_tokens(prefix: torch.Tensor, index: List[int]) -> torch.Tensor:
        """``[T, B, D]``: teacher t's summary token (prefix token ``index[t]``) of every sample, in row t."""
        first = index[0]
        if index == list(range(first, first + len(index))):  # one register token per teacher
            return prefix[:, first:first + len(index)].transpose(0, 1)
        if all(i == first for i in index):  # every teacher reads the CLS token
            return prefix[:, first].unsqueeze(0).expand(len(index), -1, -1)
        return prefix[:, index].transpose(0, 1)

    def features(self, x: torch.Tensor, kind: str = "summary") -> torch.Tensor:
        """Frozen features for probes (see :data:`FEATURE_KINDS`)."""
        prefix, patches, _ = self.tokens(x)
        if kind == "summary":
            return prefix[:, 0]
        if kind == "pooled":
            return patches.mean(1)
        if kind == "adapters":
            heads = self.summaries(x, prefix, patches)
            if not heads:
                raise ValueError("features=adapters needs at least one teacher with a summary head")
            return torch.cat([heads[n] for n in self.teacher_names if n in heads], 1)
        raise ValueError(f"unknown feature kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)}")

    def normalise_targets(self, name: str, summary: Optional[torch.Tensor], spatial: Optional[torch.Tensor],
                          update: bool) -> Dict[str, torch.Tensor]:
        """Targets in normalised space; `update` feeds running statistics (training only)."""
        out: Dict[str, torch.Tensor] = {}
        if summary is not None and module_key(name) in self.summary_norms:
            norm = self.summary_norms[module_key(name)]
            if update:
                norm.update(summary)
            out["summary"] = norm(summary.float())
        if spatial is not None and module_key(name) in self.spatial_norms:
            norm = self.spatial_norms[module_key(name)]
            spatial = spatial.float()  # [B, C, h, w], normalised over C in place of layout (no transposes)
            if update:
                norm.update_spatial(spatial)
            out["spatial"] = norm.forward_spatial(spatial)
        return out

    def denormalise(self, name: str, pred: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A teacher's predictions back in that teacher's own feature space (the normalisers inverted)."""
        out: Dict[str, torch.Tensor] = {}
        if "summary" in pred:
            out["summary"] = self.summary_norms[module_key(name)].inverse(pred["summary"].float())
        if "spatial" in pred:
            out["spatial"] = self.spatial_norms[module_key(name)].inverse_spatial(pred["spatial"].float())
        return out

