"""The zero-shot part of `agglom eval` (``zero_shot=recipe|FILE``): who classifies through which text tower.

- The student (``run=`` a run dir or an export): for each CLIP-family teacher T of its roster, the student's
  summary adapter output for T, mapped back to T's own space (the normaliser inverted), against T's text tower —
  the one the adapter pack of an export carries, else the one built from T's card. Entry ``<model>@<T>``.
- Each audited teacher that has a text tower (``audit=true`` or ``teacher=NAME``): its own summary embedding
  (read from the run's feature cache where it has one, else online) against its text tower built from its card.
  Entry ``teacher:<T>``.

The scoring and metrics are :mod:`agglom.eval.zero_shot.zero_shot`. The report gets a ``zero_shot`` section, and
``zero_shot_predictions.csv`` (predictions.csv's format, val and test rows, model column = the entry) the
per-sample scores, so every zero-shot number can be recomputed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from agglom.config.load import ConfigError
from agglom.data.readers import eval_loader
from agglom.eval.extract import SplitFeatures, attribute_groups, extract, resolve_model_dir, teacher_encoder
from agglom.eval.predictions import prediction_rows
from agglom.eval.section import EvalContext
from agglom.eval.zero_shot.zero_shot import (
    SCORING,
    class_embeddings,
    label_scores,
    parse_prompts,
    read_prompts,
    zero_shot_probs,
    zero_shot_section,
)

RECIPE = ("recipe", "true", "True", "1", "yes")


def resolve_prompts(spec: str, args_eval: Any, cfg: Any) -> Dict[str, Any]:
    """``zero_shot=recipe``: this command's ``eval.zero_shot_prompts``, else the run recipe's; otherwise a file."""
    if str(spec) in RECIPE:
        for source in (args_eval, cfg.eval):
            prompts = OmegaConf.to_container(source.zero_shot_prompts, resolve=True) \
                if OmegaConf.is_config(source.zero_shot_prompts) else dict(source.zero_shot_prompts or {})
            if prompts:
                return prompts
        raise ConfigError("zero_shot=recipe: neither this command nor the run's recipe sets eval.zero_shot_prompts "
                          "(give zero_shot=PROMPTS.yaml, or eval.zero_shot_prompts='{0: [...], 1: [...]}')")
    return read_prompts(spec)


def _towers(names: List[str], run: Optional[str], kind: str) -> Dict[str, Any]:
    """Text towers by teacher: the adapter pack's for an export's student, else built from the cards."""
    import teachers as zoo

    out = {}
    if kind == "student" and run and resolve_model_dir(Path(run)) == "export":
        from agglom.export import load_pack_text_tower

        return {n: load_pack_text_tower(Path(run), n) for n in names}
    for n in names:
        out[n] = zoo.build_text_tower(zoo.load_card(n))
    return out


def clip_teachers(names: List[str], wanted: List[str], run: Optional[str], kind: str) -> List[str]:
    """The teachers among ``names`` that zero-shot can go through (``wanted`` restricts them)."""
    import teachers as zoo

    if kind == "student" and run and resolve_model_dir(Path(run)) == "export":
        import json

        towers = json.loads((Path(run) / "adapters.json").read_text()).get("text_towers") or {}
        have = [n for n in names if "path" in towers.get(n, {})]
    else:
        have = []
        for n in names:
            try:
                card = zoo.load_card(n)
                if zoo.has_text_tower(card) and card.summary in (None, "embed"):
                    have.append(n)
            except Exception:  # noqa: BLE001 - a card that cannot be read here has no usable tower here either
                continue
    if wanted:
        missing = [n for n in wanted if n in names and n not in have]
        if missing:
            raise ConfigError(f"zero-shot: teacher(s) {', '.join(missing)} have no usable text tower here")
        have = [n for n in have if n in wanted]
    return have


def _student_encoder(model: Any, names: List[str]) -> Callable:
    """The student's image embeddings for several teachers at once (concatenated in teacher space)."""

    def enc(x: torch.Tensor, keys: Any) -> torch.Tensor:
        heads = model.summaries(x)
        return torch.cat([model.denormalise(n, {"summary": heads[n]})["summary"] for n in names], 1)

    return enc


def _score(embeddings: Dict[str, SplitFeatures], tower: Any, heads: Dict[Any, Dict[int, List[str]]],
           label_names: Optional[List[str]]) -> Dict[str, Tuple[np.ndarray, np.ndarray, Optional[List[str]]]]:
    classes = {h: class_embeddings(tower, c) for h, c in heads.items()}
    out = {}
    for role, sf in embeddings.items():
        probs = {h: zero_shot_probs(sf.features, ce, tower.logit_scale, tower.logit_bias) for h, ce in classes.items()}
        out[role] = label_scores(sf.labels, probs, heads, label_names)
    return out


def plan_zero_shot(args: Any, cfg: Any, model: Any, audit_names: List[str],
                   label_info: Dict[str, Any]) -> Dict[str, Any]:
    """What zero-shot will do, checked before any feature is extracted (a wrong prompts file or teacher fails at
    once, exit 2): ``{"prompts", "student": [teachers], "audit": [teachers]}``."""
    prompts = resolve_prompts(args.zero_shot, args.eval, cfg)
    if label_info.get("type") == "multilabel":
        parse_prompts(prompts, True, label_info.get("names"), int(label_info.get("num_classes") or 0))
    else:
        parse_prompts(prompts, False, label_info.get("names"))
    wanted = list(args.eval.zero_shot_teachers)
    student = clip_teachers(list(model.teacher_names), wanted, args.run, "student") if model is not None else []
    audit = clip_teachers(audit_names, wanted, None, "teacher")
    if not student and not audit:
        raise ConfigError("zero-shot: no CLIP-family teacher with a text tower among the evaluated models "
                          "(open_clip or a transformers SigLIP/CLIP card whose summary is embed)")
    return {"prompts": prompts, "student": student, "audit": audit}


def run_zero_shot(ctx: EvalContext, plan: Dict[str, Any]) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The report's ``zero_shot`` section and its prediction rows (see the module docstring), for a
    :func:`plan_zero_shot` plan, from the evaluation's context (its shared pass, audited teachers, grouping)."""
    args, cfg, model, primary, device = ctx.args, ctx.cfg, ctx.model, ctx.primary, ctx.device
    teacher_mods, splits_of, attr_names = ctx.teachers, ctx.splits_of, ctx.attr_names
    indexer, specs, exclude_unknown = ctx.grouping["indexer"], ctx.grouping["specs"], ctx.grouping["exclude_unknown"]
    label_names = ctx.grouping["label_names"]
    prompts = plan["prompts"]
    ref = next(iter(splits_of.values()))
    multilabel = ref["test"].labels.ndim == 2
    heads = parse_prompts(prompts, multilabel, label_names, ref["test"].labels.shape[1] if multilabel else 1)
    train_attrs = ref["train"].attrs

    def groups(sf: SplitFeatures) -> Dict[str, np.ndarray]:
        return attribute_groups(sf.attrs, attr_names or None, reference=train_attrs, indexer=indexer, specs=specs)

    jobs: List[Tuple[str, str, str, Dict[str, SplitFeatures], Any]] = []  # (entry, kind, via, {val, test}, tower)
    if model is not None and plan["student"]:
        names = plan["student"]
        towers = _towers(names, args.run, "student")
        if names:
            enc = _student_encoder(model, names)
            emb = {role: extract(eval_loader(cfg, split, batch_size=args.batch_size), enc, device,
                                 desc=f"zero-shot {primary}:{split}")
                   for role, split in (("val", cfg.data.val_split), ("test", cfg.data.test_split))}
            start = 0
            for n in names:
                dim = towers[n].embed_dim
                part = {r: SplitFeatures(sf.features[:, start:start + dim], sf.labels, sf.keys, sf.attrs)
                        for r, sf in emb.items()}
                start += dim
                jobs.append((f"{primary}@{n}", "student", n, part, towers[n]))
    for n, tower in _towers([n for n in plan["audit"] if n in teacher_mods], None, "teacher").items():
        own = splits_of.get(f"teacher:{n}")
        if own is not None and args.eval.features != "pooled":  # the audit's probe features are the embedding
            emb = {"val": own["val"], "test": own["test"]}
        else:
            enc = teacher_encoder(teacher_mods[n], "summary")
            emb = {role: extract(eval_loader(cfg, split, batch_size=args.batch_size), enc, device,
                                 desc=f"zero-shot {n}:{split}")
                   for role, split in (("val", cfg.data.val_split), ("test", cfg.data.test_split))}
        jobs.append((f"teacher:{n}", "teacher", n, emb, tower))

    models: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    for entry, kind, via, emb, tower in jobs:
        scored = _score(emb, tower, heads, label_names)
        (yv, sv, cols), (yt, st, _) = scored["val"], scored["test"]
        gv, gt = groups(emb["val"]), groups(emb["test"])
        sec = zero_shot_section(kind, via, yv, sv, yt, st, gv, gt, args.eval, seed=args.seed,
                                exclude_unknown=exclude_unknown, label_names=cols)
        sec.update(logit_scale=tower.logit_scale, logit_bias=tower.logit_bias, text_tower_digest=tower.digest)
        models[entry] = sec
        for role, y, s, g in (("val", yv, sv, gv), ("test", yt, st, gt)):
            rows += [{"model": entry, **r} for r in
                     prediction_rows(emb[role].keys, role, y, s, sec["thresholds"], {k: list(v) for k, v in g.items()},
                                     label_names=cols)]
    section = {"prompts": {str(k): v for k, v in prompts.items()}, "scoring": SCORING, "models": models}
    return section, rows


__all__ = ["plan_zero_shot", "run_zero_shot", "resolve_prompts", "clip_teachers"]
