"""The task: frozen teachers (outside the trainable module) -> targets; student + heads -> predictions;
losses -> teacher balance -> group objective -> one scalar and named terms.

:class:`AgglomTask` is a task of the shared loop (:class:`agglom.train.task_protocol.LoopTask`): the loop calls
`task(batch)`; the engine only ever sees `task.model` (the trainable ModuleDict).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from agglom.cache.reader import WorkerCacheRead, cached_from_batch
from agglom.config.access import cfg_get
from agglom.model import AgglomModel, TeacherSpec
from agglom.model.agglomerator import module_key
from agglom.model.student import resize_input
from agglom.objective.columns import per_teacher
from agglom.objective.groups import build_group_objective
from agglom.objective.losses import LossSettings, distillation_losses
from agglom.objective.routing import apply_routing, build_routing
from agglom.objective.teacher_balance import TeacherBalance
from agglom.objective.tracking import GroupTeacherTracker
from agglom.phases import PhaseTimer
from agglom.train import multires
from agglom.train.task_protocol import LoopTask

Targets = Dict[str, Dict[str, torch.Tensor]]


def is_cached(source: Any) -> bool:
    """A teacher read from the feature cache rather than run online."""
    return hasattr(source, "lookup")


def metric_names(names: List[str]) -> List[str]:
    """How teachers are named in metric keys and logs: a teacher given by path (a card file or an export folder
    such as ``runs/demo/teachers/ft-general``) by its last path part without suffix, unless two would collide."""
    short = [Path(n).stem if ("/" in n or n.endswith((".yaml", ".yml"))) else n for n in names]
    return short if len(set(short)) == len(short) else list(names)


def teacher_spec(entry: Any, teacher: Any) -> TeacherSpec:
    """The model's description of a teacher (dims, grid, which heads, card digest) from its recipe entry and the
    built (or cached) teacher."""
    return TeacherSpec(name=teacher.name, summary_dim=int(teacher.summary_dim), spatial_dim=int(teacher.spatial_dim),
                       grid=tuple(int(g) for g in teacher.grid), summary=bool(entry.summary),
                       spatial=bool(entry.spatial), digest=getattr(teacher, "digest", ""))


class AgglomTask(LoopTask):
    """Distillation of frozen teachers into the student, as a :class:`~agglom.train.task_protocol.LoopTask`: it
    overrides every optional hook (the normalisers' stats pass, the objective's stateful modules and tracked
    averages, cached teachers read in the workers, the per-step input size)."""

    def __init__(self, cfg: Any, specs: List[TeacherSpec], teachers: Dict[str, nn.Module], group_names: List[str],
                 in_chans: int, auto_routing: Any = None, routing_info: Optional[Dict[str, Any]] = None) -> None:
        """``auto_routing``: ``[T, G]`` weights from the teacher audit (``objective.route_by_audit``), which explicit
        ``objective.routing`` entries override; ``routing_info``: the audit's record (written as routing.json)."""
        super().__init__()
        self.cfg = cfg
        self.routing_info = routing_info
        self.specs = specs
        self.names = [s.name for s in specs]
        self.keys = metric_names(self.names)  # names in metrics.jsonl and logs
        self.chunk = {e.name: int(e.get("batch_size", 0) or 0) for e in cfg.teachers}
        self.group_names = list(group_names)
        self.model = AgglomModel(cfg, specs, in_chans)
        unknown = self.group_names.index("unknown") if "unknown" in self.group_names else -1
        weights = [float(e.weight) for e in cfg.teachers]
        scope = cfg.objective.group_scope
        from agglom.config.choices import GROUP_SCOPE

        if scope not in GROUP_SCOPE:
            from agglom.config.load import ConfigError

            raise ConfigError(f"objective.group_scope must be one of {', '.join(GROUP_SCOPE)}, got {scope!r}")
        self.per_teacher = scope == "teacher"
        self.loss_settings = LossSettings.of(cfg.objective)  # read once: the step reads plain values
        self.resolutions = list(cfg_get(cfg.data, "resolutions", None) or [])

        routing = build_routing(dict(cfg.objective.routing or {}), self.names, self.group_names, base=auto_routing,
                                aliases=self.keys)
        refs = None
        if cfg.objective.get("reference"):
            from agglom.objective.reference import reference_losses

            refs = reference_losses(cfg.objective.reference, self.keys, self.group_names, self.per_teacher)
            if self.per_teacher:  # the objective sees routed losses w_tg·L_tg: hold them to w_tg·r_tg, same units
                refs = [[None if r is None else r * float(routing[t, g]) for g, r in enumerate(row)]
                        for t, row in enumerate(refs)]

        def group_objective(reference: Any = None) -> nn.Module:
            return build_group_objective(cfg.objective, len(self.group_names), unknown,
                                         exclude_unknown=cfg.groups.unknown != "include", reference=reference)

        self.objective = nn.ModuleDict({
            "balance": TeacherBalance(cfg.objective, self.keys, weights),
            # one group objective per teacher (its own GroupDRO weights), or one on the combined loss
            "groups": nn.ModuleList([group_objective(refs[i] if refs else None) for i in range(len(self.names))])
            if self.per_teacher else group_objective(refs),
            "tracker": GroupTeacherTracker(len(self.group_names), self.keys, self.group_names,
                                           cfg.objective.track_momentum),
        })
        self.register_buffer("routing", routing)
        self.unrouted = bool((routing == 1).all())  # every weight 1: the step skips the (identity) routing
        # teachers stay outside the module tree: never trained, never checkpointed, never wrapped
        object.__setattr__(self, "teachers", teachers)
        object.__setattr__(self, "forward_model", self.model)
        self.device = torch.device("cpu")
        self.autocast = torch.autocast("cpu", enabled=False)

    def attach(self, forward_model: nn.Module, device: torch.device, autocast: Any) -> None:
        """Use the engine-wrapped model for forward passes."""
        object.__setattr__(self, "forward_model", forward_model)
        self.device, self.autocast = device, autocast
        self.objective.to(device)
        self.routing = self.routing.to(device)
        for t in self.teachers.values():
            if not is_cached(t):
                t.to(device)

    # targets ------------------------------------------------------------------------------------------------
    def raw_targets(self, batch: Dict[str, Any], image: torch.Tensor) -> Targets:
        """Teacher features: read from the batch when cached, else computed online by the frozen teacher."""
        out: Targets = {}
        for s in self.specs:
            source = self.teachers[s.name]
            if is_cached(source):
                read = cached_from_batch(batch, s.name) or source.lookup(batch["key"])  # the workers' read, if any
                t = {k: v.to(self.device, non_blocking=True) for k, v in read.items()}
            else:
                t = self._online(self.teachers[s.name], image, self.chunk[s.name])
            # an inference tensor (an online teacher's output) is cloned outside inference mode, as the loss keeps
            # targets for backward; a cached feature from the batch is used as it is (nothing writes to targets)
            out[s.name] = {k: v.float().clone() if v.is_inference() else v.float() for k, v in t.items()}
        return out

    def worker_reads(self) -> Optional[WorkerCacheRead]:
        """What the training reader's workers should attach to each batch: the cached teachers' features
        (``data.cache_in_workers``, default on), so the step does not wait on the cache's disk reads."""
        cached = {s.name: self.teachers[s.name] for s in self.specs if is_cached(self.teachers[s.name])}
        if not cached or not bool(cfg_get(self.cfg.data, "cache_in_workers", True)):
            return None
        return WorkerCacheRead(cached)

    @staticmethod
    def _online(teacher: nn.Module, image: torch.Tensor, chunk: int) -> Dict[str, torch.Tensor]:
        """A frozen teacher's outputs, on chunks of ``chunk`` images when set (a big teacher's activations at batch
        size would not fit; the outputs are the same, as teachers are in eval mode)."""
        parts = [teacher(x) for x in (image.split(chunk) if chunk > 0 else (image,))]
        return {"summary": torch.cat([o.summary for o in parts]), "spatial": torch.cat([o.spatial for o in parts])}

    def targets(self, batch: Dict[str, Any], image: torch.Tensor, update_norms: bool) -> Targets:
        """Normalised teacher targets; the raw features are the ``teachers`` phase, the normalisers ``heads_loss``."""
        raw = self.raw_targets(batch, image)
        self.phases.mark("teachers")
        model = self.model
        out = {n: model.normalise_targets(n, raw[n].get("summary"), raw[n].get("spatial"), update_norms) for n in raw}
        self.phases.mark("heads_loss")
        return out

    @property
    def phases(self) -> PhaseTimer:
        """The step's phase timer (:mod:`agglom.phases`), shared with the model (which marks ``student``);
        disabled unless the loop sets one (``log.phases``)."""
        return self.model.phases

    @phases.setter
    def phases(self, timer: PhaseTimer) -> None:
        self.model.phases = timer

    # the step -------------------------------------------------------------------------------------------------
    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """One micro-batch: the teachers' normalised targets, the student's predictions, per sample x teacher
        losses routed per group, balanced across teachers and aggregated over groups -> ``{"loss", **terms}``."""
        image = batch["image"].to(self.device, non_blocking=True)
        group = batch["group"].to(self.device, non_blocking=True)
        with torch.no_grad():
            targets = self.targets(batch, image, update_norms=self.training)
        student_image = resize_input(image, batch["student_size"]) if "student_size" in batch else image
        with self.autocast:
            preds = self.forward_model(student_image)
        loss_bt, _ = distillation_losses(preds, targets, self.names, self.loss_settings)
        balance = self.objective["balance"]
        mask = balance.mask(loss_bt.shape[0], loss_bt.device)
        routed = loss_bt if self.unrouted else apply_routing(loss_bt, group, self.routing)
        if self.per_teacher:
            # groups first (per teacher: parity of each teacher's fidelity), then across teachers; every teacher's
            # objective in one pass (agglom/objective/columns.py), its terms averaged over the teachers that saw
            # each group (a group absent for one teacher, teacher drop, is NaN there)
            cols = per_teacher(self.objective["groups"], routed, group, mask)
            loss = balance.combine(cols.loss, mask.sum(0) > 0)
            group_terms = cols.terms
            teacher_terms = {f"teacher/{n}": u for n, u in zip(self.keys, cols.utility.unbind(0))}
        else:
            # across teachers first, then groups on the combined per-sample loss
            per_sample, teacher_terms = balance(routed, mask)
            loss, group_terms = self.objective["groups"](per_sample, group)
        if self.training:
            self.objective["tracker"].update(loss_bt.detach(), mask, group)
        terms = {"loss": loss, **self._named(group_terms), **teacher_terms}
        if "student_size" in batch:  # logged per step, so a run's resolution schedule can be read back
            terms["input_size"] = torch.tensor(float(student_image.shape[-1]))  # what the student was fed
        self.phases.mark("heads_loss")  # since the model's "student" mark: heads, losses, objective
        return terms

    def step_batch(self, batch: Dict[str, Any], step: int) -> Dict[str, Any]:
        """The loop's hook before each micro-batch: under ``data.resolutions`` the step's student size and sample
        count, a pure function of (seed, step) (:mod:`agglom.train.multires`); else the batch unchanged."""
        if not self.resolutions:  # one size: the batch as it is, without reading the config each step
            return batch
        return multires.step_batch(self.cfg, batch, step)

    def _named(self, terms: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """`group/3` -> `group/<name>` (and GroupDRO's `q/3`), so logs read by group name."""
        out = {}
        for k, v in terms.items():
            kind, _, idx = k.partition("/")
            out[f"{kind}/{self.group_names[int(idx)]}" if idx.isdigit() else k] = v
        return out

    @torch.no_grad()
    def fit_normalisers(self, batches: List[Dict[str, Any]]) -> None:
        """The stats pass: fit every normaliser on teacher features of a few batches."""
        collected: Dict[Tuple[str, str], List[torch.Tensor]] = {}
        for batch in batches:
            image = batch["image"].to(self.device)
            for name, t in self.raw_targets(batch, image).items():
                if "summary" in t:
                    collected.setdefault((name, "summary"), []).append(t["summary"])
                if "spatial" in t:
                    collected.setdefault((name, "spatial"), []).append(t["spatial"].flatten(2).transpose(1, 2).flatten(0, 1))
        for (name, kind), chunks in collected.items():
            norms = self.model.summary_norms if kind == "summary" else self.model.spatial_norms
            if module_key(name) in norms:
                norms[module_key(name)].fit(torch.cat(chunks).float())

    def tracked(self) -> Dict[str, float]:
        """The per-group x teacher moving averages of the losses, logged as ``ema/<teacher>/<group>``."""
        return {f"ema/{k}": float(v) for k, v in self.objective["tracker"].as_dict().items()}

    # what the shared loop asks of a task (agglom.train.task_protocol.LoopTask) -------------------------------
    def param_groups(self) -> List[dict]:
        """AdamW groups over the student and heads (no decay on norms, biases, tokens)."""
        from agglom.train.optim import param_groups

        return param_groups(self.model, self.cfg.optim.weight_decay)

    def stateful(self) -> Dict[str, nn.Module]:
        """Checkpointed beside the model: group weights, teacher balance, the per-group tracker."""
        return {"objective": self.objective}

    def prepare(self, fresh: bool) -> None:
        """A fresh run fits the normalisers on a stats pass (the first data read; a resumed run restores them)."""
        if fresh:
            from agglom.distill.setup import stats_batches

            self.fit_normalisers(stats_batches(self.cfg))

    def write_run_files(self, run_dir: Path) -> None:
        """config.yaml, teachers.json, groups.json (+ routing.json) of a run that starts: written once per run."""
        from agglom.distill.setup import write_run_files

        write_run_files(self.cfg, Path(run_dir), self.specs, self.group_names, self.routing_info)

    def flops_per_sample(self, batch: Dict[str, Any]) -> float:
        """Training FLOPs per sample: 3x the student+heads forward (fwd + bwd) + the online teachers' forwards."""
        from torch.utils.flop_counter import FlopCounterMode

        image = batch["image"][:2].to(self.device)
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                self.model(resize_input(image, batch["student_size"]) if "student_size" in batch else image)
        student = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            with torch.no_grad():
                for s in self.specs:
                    if not is_cached(self.teachers[s.name]):
                        self.teachers[s.name](image)
        return (3 * student + counter.get_total_flops()) / image.shape[0]
