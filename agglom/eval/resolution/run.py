"""The pass behind the report's ``resolution`` section (``eval.resolutions=[0.5,1,2]``, multiples of the training
size): the student at each size, probed and compared with its teachers exactly as the main evaluation does.

One extra pass over train/val/test: the reader reads at the largest evaluated size (never below the evaluation's
own size), every student size is an antialiased resize of that image (:func:`agglom.model.student.resize_input`,
the rule training uses), and each teacher sees the image at its own input size as always — so a teacher's
targets are the same at every student size and only the student changes. Per size: the linear probe of the
classification section refitted on that size's features (its test AUC and worst-group AUC), and the
global-normalised R² fidelity of every teacher × output (:class:`~agglom.eval.fidelity.fidelity.FidelityAccumulator`;
teachers run once per batch whatever the number of sizes). The curves, the switch flag and the validated range
are :mod:`agglom.eval.resolution.resolution`'s.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from agglom.config.load import ConfigError
from agglom.model.student import resize_input


class AtSize:
    """The run's model with its input resized to ``size`` first (what a fidelity accumulator calls)."""

    def __init__(self, model: Any, size: int) -> None:
        self.model, self.size = model, int(size)

    def __call__(self, x: torch.Tensor) -> Dict[str, Dict[str, torch.Tensor]]:
        return self.model(resize_input(x, self.size))

    def features(self, x: torch.Tensor, kind: str) -> torch.Tensor:
        return self.model.features(resize_input(x, self.size), kind)

    def __getattr__(self, name: str) -> Any:  # normalise_targets, denormalise, specs, ...
        return getattr(self.model, name)


class OncePerBatch:
    """An online teacher that runs once per batch however many accumulators ask for the same batch."""

    def __init__(self, teacher: Any) -> None:
        self.teacher, self._key, self._out = teacher, None, None

    def __call__(self, x: torch.Tensor) -> Any:
        key = (x.data_ptr(), tuple(x.shape))
        if key != self._key:
            self._out, self._key = self.teacher(x), key
        return self._out


class Fanout:
    """One ``update(x, keys)`` for several fidelity accumulators (one per size)."""

    def __init__(self, accumulators: Sequence[Any]) -> None:
        self.accumulators = list(accumulators)

    def update(self, x: torch.Tensor, keys: Sequence[str]) -> None:
        for acc in self.accumulators:
            acc.update(x, keys)


def student_geometry(model: Any) -> tuple:
    """(training size px, patch size px, dynamic_img_size) of a run's or export's student."""
    student = model.student
    p = student.patch_embed.patch_size
    base = int((getattr(student, "pretrained_cfg", None) or {}).get("input_size", (0, 0, 0))[-1])
    return base, int(p[0] if isinstance(p, (tuple, list)) else p), bool(getattr(student, "dynamic_img_size", False))


def training_size(model: Any, cfg: Any) -> int:
    """The size (px) ``eval.resolutions``' multiples are relative to: the largest size the student was trained at.

    A run with ``data.resolutions`` trained its student at those sizes, not at the reader's ``data.image_size``
    (which only has to be at least their maximum): a run read at 128 px with ``data.resolutions=[64]`` trained at
    64 px, so ``[0.5, 1, 2]`` means 32, 64, 128 px and the validated range grows from 64. Without
    ``data.resolutions`` it is the student's recorded input size (``data.image_size``)."""
    from agglom.export.input_sizes import trained_sizes

    if cfg.data.get("resolutions"):
        return max(trained_sizes(cfg))
    return student_geometry(model)[0] or int(cfg.data.image_size)


def check_resolution_eval(model: Any, multiples: Sequence[float]) -> None:
    """Refuse (exit 2, naming the key) a resolution evaluation the student cannot take: no student, or one built
    without ``dynamic_img_size``."""
    if model is None:
        raise ConfigError("eval.resolutions: needs run=<run or export dir> (a student to resize)")
    if not student_geometry(model)[2]:
        raise ConfigError(f"eval.resolutions={list(multiples)}: the student was built without dynamic_img_size, so "
                          "it takes its training size only; train with student.model_args.dynamic_img_size=true")


def _probe_curves(results: Mapping[int, Mapping[str, Any]], sizes: Sequence[int]) -> tuple:
    from agglom.eval.metrics import headline

    auc: List[Optional[float]] = []
    worst: Dict[str, List[Optional[float]]] = {}
    for s in sizes:
        attrs = results[s]["section"]["attributes"]
        heads = {a: headline(r) for a, r in attrs.items()}
        auc.append(next(iter(heads.values()))["auc"] if heads else None)  # the same for every attribute
        for a, h in heads.items():
            worst.setdefault(a, []).append(h.get("worst_group_auc"))
    return auc, worst


def resolution_report(ctx: Any) -> Dict[str, Any]:
    """The ``resolution`` section for ``eval.resolutions`` (see the module docstring), from the evaluation's context
    (:class:`agglom.eval.section.EvalContext`): its student, its fidelity teachers (name -> teacher or cached
    teacher; none without a fidelity accumulator) and its grouping."""
    from omegaconf import OmegaConf

    from agglom.eval.classification.protocol import probe_model
    from agglom.eval.extract import collect_splits
    from agglom.eval.fidelity.fidelity import FidelityAccumulator
    from agglom.eval.resolution.resolution import eval_sizes, resolution_section

    args, cfg, model, device, g, attr_names = ctx.args, ctx.cfg, ctx.model, ctx.device, ctx.grouping, ctx.attr_names
    teachers: Mapping[str, Any] = ctx.fidelity.teachers if ctx.fidelity is not None else {}

    ev = args.eval
    check_resolution_eval(model, list(ev.resolutions))
    _, patch, _ = student_geometry(model)
    base = training_size(model, cfg)
    sizes = eval_sizes(base, list(ev.resolutions), patch)
    rcfg = copy.deepcopy(cfg)
    rcfg.data.image_size = read_at = max(max(sizes), int(cfg.data.image_size))
    shared = {n: (t if hasattr(t, "lookup") else OncePerBatch(t)) for n, t in teachers.items()}
    at = {s: AtSize(model, s) for s in sizes}
    accs = {s: FidelityAccumulator(at[s], shared) for s in sizes} if shared else {}
    encoders = {f"{s}px": (lambda x, keys, m=at[s]: m.features(x, ev.features)) for s in sizes}
    print(f"agglom eval: resolution curve at {', '.join(map(str, sizes))} px (read at {read_at} px)", flush=True)
    with torch.no_grad():
        splits_of = collect_splits(rcfg, encoders, device, fidelity=Fanout(list(accs.values())) if accs else None,
                                   batch_size=args.batch_size)
    quick = OmegaConf.merge(ev, {"label_fractions": [], "bootstrap": 0, "optimistic_f1": False})
    results = {s: probe_model(f"{s}px", "student", splits_of[f"{s}px"], quick, attr_names, seed=args.seed,
                              indexer=g["indexer"], specs=g["specs"], exclude_unknown=g["exclude_unknown"],
                              label_names=g["label_names"]) for s in sizes}
    auc, worst = _probe_curves(results, sizes)
    fidelity: Dict[str, List[Optional[float]]] = {}
    for s in sizes:
        for key, per_sample in (accs[s].result()["r2"].items() if accs else []):
            v = float(np.nanmean(per_sample)) if np.isfinite(per_sample).any() else None
            fidelity.setdefault(key, []).append(v)
    sec = resolution_section(base, list(ev.resolutions), sizes, read_at, fidelity, auc, worst,
                             tol=float(ev.resolution_tol), jump=float(ev.resolution_jump))
    rng = sec["validated_range"]
    print(f"agglom eval: validated input sizes {f'{rng[0]}-{rng[1]} px' if rng else 'none'}; mode switches "
          f"flagged: {len(sec['switches'])}", flush=True)
    return sec


__all__ = ["AtSize", "OncePerBatch", "Fanout", "student_geometry", "training_size", "check_resolution_eval",
           "resolution_report"]
