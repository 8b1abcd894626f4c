"""The report's optional ``sam_prompts`` section (``agglom eval RUN eval.sam_prompts=true``): prompted segmentation
through each SAM-family teacher's own prompt encoder + mask decoder, fed once with the teacher's image embedding and
once with the student's SAM adapter output in its place (:mod:`agglom.export.sam_predictor`).

Protocol. Every test sample whose mask has foreground (label maps: any label > 0) gets prompts derived from its
mask (``eval.sam_prompt``): ``box`` — the tight box around the foreground pixels (x0, y0, x1, y1 of the extreme
pixel indices), one mask (``multimask_output=False``); ``point`` — one positive click on the foreground pixel nearest
the foreground's centroid, SAM's three masks and the one with the best predicted IoU (segment-anything's ambiguity
handling); ``box+point`` — both, one mask. The teacher's embedding is its spatial map on the evaluated image (the
same preprocessing as in training, online); the student's is its adapter for that teacher, de-normalised and on
SAM's embedding grid. Both go through segment-anything's ``SamPredictor.predict`` (coordinate transform, decoder,
post-processing, mask threshold 0) at the mask's size. Per sample: Dice/IoU of each encoder's mask against the
ground truth, and the agreement Dice/IoU of the student-encoder mask against the teacher-encoder mask (IGNORE pixels
left out; both empty scores 1); per attribute, :func:`agglom.eval.dense.dense.dice_fairness` (per-group means with BCa
intervals, Dice gap, worst group, equity-scaled Dice). ``adapter_grid`` is the grid the student's adapter predicts (the
student's tokens already resampled to the teacher's grid in training, or a pooled feature cache's); ``resampled``:
it differs from SAM's embedding grid and was resized to it bilinearly. ``embedding_cosine``: the mean per-position
cosine between the two embeddings.

Section shape (documented in :mod:`agglom.eval.report.schema` too)::

    "sam_prompts": {
      "protocol": "...", "prompt": "box" | "point" | "box+point", "split": "test", "mask_size": [H, W],
      "teachers": {"<teacher>": {
          "decoder": "<where its weights came from>", "embedding": [C, e, e], "adapter_grid": [h, w],
          "resampled": bool, "n": int, "without_foreground": int, "embedding_cosine": float,
          "models": {"teacher:<teacher>" | "<student>": {"encoder": "teacher" | "student",
                                                         "attributes": {"<attribute>": <dice_fairness result>}}},
          "agreement": {"attributes": {"<attribute>": <dice_fairness result>}}}}
    }
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from agglom.config.choices import SAM_PROMPTS, input_channels
from agglom.config.load import ConfigError
from agglom.data.masks import IGNORE
from agglom.data.patients import patient_ids

KEY = "eval.sam_prompts=true"
PROTOCOL = ("prompts from each test mask with foreground (box: tight box; point: the foreground pixel nearest the "
            "centroid, best of SAM's 3 masks by predicted IoU; box+point: both, one mask), decoded by the SAM "
            "teacher's own prompt encoder + mask decoder (segment-anything SamPredictor.predict, threshold 0) on the "
            "teacher's embedding and on the student's de-normalised SAM adapter output; Dice/IoU against the mask "
            "and between the two encoders' masks (agreement)")


@dataclass
class SamPlan:
    """What the pass needs, built before any other work: per SAM teacher its frozen teacher (online), the predictor
    whose decoder is the teacher's, and where the decoder came from."""

    prompt: str
    teachers: Dict[str, Any] = field(default_factory=dict)
    predictors: Dict[str, Any] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)


def _decoder(run: Any, name: str, card: Any) -> Tuple[Any, Any, str]:
    """The teacher's prompt encoder + mask decoder: an export's packed one, else from the card's checkpoint."""
    from pathlib import Path

    from agglom.export.sam_pack import SamDecoderUnavailable, load_sam_decoder
    from teachers.families.sam import sam_prompt_decoder

    if run and (Path(run) / "adapters.json").is_file():
        try:
            prompt, decoder, meta = load_sam_decoder(Path(run), name)
            return prompt, decoder, f"export {meta['source']}"
        except SamDecoderUnavailable as e:
            print(f"agglom eval: {e}; using the card's decoder", flush=True)
    return sam_prompt_decoder(card)


def plan_sam(args: Any, cfg: Any, model: Any, device: torch.device, sheet: Optional[Mapping[str, Any]]) -> SamPlan:
    """Check ``eval.sam_prompts`` before any work (a student, a SAM-family teacher, masks in the test split by the
    dataset's datasheet ``sheet`` where it has one, the teacher and its decoder buildable here) and build what the pass
    needs; :class:`ConfigError` (exit 2) otherwise."""
    import teachers as zoo
    from agglom.export.sam_pack import sam_teachers
    from agglom.export.sam_predictor import StudentSamPredictor, assemble_student_sam

    if args.eval.sam_prompt not in SAM_PROMPTS:
        raise ConfigError(f"eval.sam_prompt={args.eval.sam_prompt!r}: choose one of {', '.join(SAM_PROMPTS)}")
    if model is None:
        raise ConfigError(f"{KEY}: needs run=<run or export dir>: the student is what replaces SAM's image encoder")
    names = sam_teachers(model.specs)
    if not names:
        raise ConfigError(f"{KEY}: the run has no SAM-family teacher with a spatial head (teachers: "
                          f"{', '.join(s.name for s in model.specs)}); train with e.g. {{name: tiny-sam}} or medsam")
    test = cfg.data.test_split
    if sheet is not None and not (sheet.get("masks") or {}).get("splits", {}).get(test, {}).get("samples", 0):
        raise ConfigError(f"{KEY}: the dataset has no segmentation masks in split {test} (its datasheet's 'masks' "
                          "section); pack masks with `agglom data pack mask_col=|masks=`")
    c = input_channels(cfg.data.grayscale)
    plan = SamPlan(prompt=str(args.eval.sam_prompt))
    for name in names:
        try:
            card = zoo.load_card(name)
            teacher = zoo.build_teacher(card, list(cfg.student.mean)[:c], list(cfg.student.std)[:c], str(device))
            prompt, decoder, source = _decoder(args.run, name, card)
        except (zoo.CardError, zoo.MissingWeightsError, zoo.CheckpointFormatError, zoo.UnsafeCheckpointError,
                OSError) as e:
            raise ConfigError(f"{KEY}: SAM teacher {name}: {str(e).splitlines()[0]}") from None
        spec = next(s for s in model.specs if s.name == name)
        if spec.digest and card.digest() != spec.digest:
            print(f"agglom eval: SAM teacher {name}: its card or weights changed since training (card digest differs); "
                  "the teacher side is today's card", flush=True)
        mean, std = [255.0 * v for v in card.norm_mean], [255.0 * v for v in card.norm_std]
        sam = assemble_student_sam(model, name, prompt, decoder, mean, std).to(device)
        plan.teachers[name], plan.predictors[name], plan.sources[name] = teacher, StudentSamPredictor(sam), source
    return plan


def prompts_from_mask(mask: np.ndarray, kind: str) -> Dict[str, Any]:
    """SamPredictor.predict's prompt arguments for one label map (foreground: > 0), in its pixel frame."""
    ys, xs = np.nonzero(mask > 0)
    out: Dict[str, Any] = {"multimask_output": kind == "point"}
    if "box" in kind:
        out["box"] = np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)
    if "point" in kind:
        i = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        out["point_coords"] = np.array([[xs[i], ys[i]]], dtype=np.float64)
        out["point_labels"] = np.array([1])
    return out


def decode(predictor: Any, embedding: torch.Tensor, prompts: Dict[str, Any], input_size: Tuple[int, int],
           size: Tuple[int, int]) -> np.ndarray:
    """One mask [H, W] bool from an image embedding [1, C, e, e] through the predictor's decoder (the best of the
    multimask outputs by predicted IoU when there are several)."""
    predictor.set_embedding(embedding, input_size, size)
    masks, scores, _ = predictor.predict(**prompts)
    return masks[int(np.argmax(scores))] if len(masks) > 1 else masks[0]


_COLS = ("dice_teacher", "iou_teacher", "dice_student", "iou_student", "agreement", "agreement_iou", "embedding_cos",
         "true_area")


def _score(plan: SamPlan, name: str, t_emb: torch.Tensor, s_emb: torch.Tensor, masks: np.ndarray,
           rows: Dict[str, List[Any]], idx: np.ndarray) -> None:
    """Decode every sample ``idx`` of a batch with both embeddings and append its per-sample numbers to ``rows``."""
    from segment_anything.utils.transforms import ResizeLongestSide

    from agglom.eval.dense.dense import dice_iou

    pred = plan.predictors[name]
    size = tuple(int(v) for v in masks.shape[-2:])
    input_size = ResizeLongestSide.get_preprocess_shape(size[0], size[1], pred.model.image_encoder.img_size)
    cos = torch.nn.functional.cosine_similarity(t_emb, s_emb, dim=1).mean((1, 2)).cpu().numpy()
    for i in idx:
        p = prompts_from_mask(masks[i], plan.prompt)
        truth = masks[i][None]
        mt = decode(pred, t_emb[i:i + 1], p, input_size, size)[None]
        ms = decode(pred, s_emb[i:i + 1], p, input_size, size)[None]
        dt, it = dice_iou(mt, truth)
        ds, is_ = dice_iou(ms, truth)
        da, ia = dice_iou(ms, np.where(truth == IGNORE, IGNORE, mt.astype(np.int64)))
        valid = max(int((truth != IGNORE).sum()), 1)
        for k, v in zip(_COLS, (dt, it, ds, is_, da, ia, cos[i], (truth > 0).sum() / valid)):
            rows[k].append(float(np.asarray(v).reshape(-1)[0]))


def sam_pass(plan: SamPlan, cfg: Any, model: Any, device: torch.device,
             batch_size: int) -> Tuple[Dict[str, Dict[str, List[Any]]], Dict[str, Any]]:
    """One pass over the test split with masks: per teacher ``{"key", "attrs", <_COLS>: [per sample]}`` over the
    samples with foreground, and what was read (``mask_size``, ``samples``, ``without_foreground``)."""
    from agglom.data.readers import eval_loader
    from agglom.export.sam_predictor import student_sam_embedding

    loader = eval_loader(cfg, cfg.data.test_split, batch_size=batch_size, whole=True, masks=True)
    per = {n: {k: [] for k in ("key", "attrs", *_COLS)} for n in plan.teachers}
    seen: Dict[str, Any] = {"mask_size": None, "samples": 0, "without_foreground": 0}
    for batch in loader:
        masks = batch["mask"].numpy()
        fg = (masks > 0).reshape(len(masks), -1).any(1)
        seen["samples"] += len(masks)
        seen["without_foreground"] += int((~fg).sum())
        seen["mask_size"] = [int(v) for v in masks.shape[-2:]]
        idx = np.flatnonzero(fg)
        if not idx.size:
            continue
        x = batch["image"].to(device)
        for name, teacher in plan.teachers.items():
            e = tuple(plan.predictors[name].model.prompt_encoder.image_embedding_size)
            t_emb = teacher(x).spatial.float()
            if tuple(t_emb.shape[-2:]) != e:
                raise ValueError(f"teacher {name}'s spatial map is {tuple(t_emb.shape[-2:])}, its decoder expects {e}")
            s_emb = student_sam_embedding(model, name, x, e)
            _score(plan, name, t_emb, s_emb, masks, per[name], idx)
            per[name]["key"] += [batch["key"][i] for i in idx]
            per[name]["attrs"] += [batch["attrs"][i] for i in idx]
    for r in per.values():  # sorted by key, as every split is (agglom.eval.extract): workers never change a draw
        order = np.argsort(np.asarray(r["key"]), kind="stable")
        for k in r:
            r[k] = [r[k][i] for i in order] if isinstance(r[k], list) else r[k]
    return per, seen


def _teacher_section(plan: SamPlan, name: str, spec: Any, r: Dict[str, List[Any]], primary: str, groups: Any,
                     n_boot: int, seed: int, exclude_unknown: bool) -> Dict[str, Any]:
    from agglom.eval.dense.dense import dice_fairness

    def fair(d: str, u: str) -> Dict[str, Any]:
        return {a: dice_fairness(r[d], r[u], g, exclude_unknown=exclude_unknown, n_boot=n_boot, seed=seed,
                                 patients=patient_ids(r["attrs"])) for a, g in groups.items()}

    pe = plan.predictors[name].model.prompt_encoder
    e = [int(v) for v in pe.image_embedding_size]
    return {"decoder": plan.sources[name], "embedding": [int(spec.spatial_dim), *e],
            "adapter_grid": [int(v) for v in spec.grid], "resampled": [int(v) for v in spec.grid] != e,
            "n": len(r["key"]), "embedding_cosine": float(np.mean(r["embedding_cos"])) if r["key"] else None,
            "models": {f"teacher:{name}": {"encoder": "teacher", "attributes": fair("dice_teacher", "iou_teacher")},
                       primary: {"encoder": "student", "attributes": fair("dice_student", "iou_student")}},
            "agreement": {"attributes": fair("agreement", "agreement_iou")}}


def run_sam(ctx: Any, plan: SamPlan) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The report's ``sam_prompts`` section (see the module docstring) and the rows of ``sam_predictions.csv``, from
    the evaluation's context (:class:`agglom.eval.section.EvalContext`). Attributes are binned as the probe's (the
    primary's train split the reference)."""
    from agglom.eval.extract import attribute_groups

    args, cfg, model, primary, device = ctx.args, ctx.cfg, ctx.model, ctx.primary, ctx.device
    grouping, attr_names, splits_of = ctx.grouping, ctx.attr_names, ctx.splits_of

    train_attrs = splits_of[primary]["train"].attrs

    with torch.no_grad():
        per, seen = sam_pass(plan, cfg, model, device, args.batch_size)
    specs = {s.name: s for s in model.specs}
    section: Dict[str, Any] = {"protocol": PROTOCOL, "prompt": plan.prompt, "split": cfg.data.test_split,
                               "mask_size": seen["mask_size"], "samples": seen["samples"],
                               "without_foreground": seen["without_foreground"], "teachers": {}}
    rows: List[Dict[str, Any]] = []
    for name, r in per.items():
        if not r["key"]:
            raise ConfigError(f"{KEY}: no test sample has a mask with foreground")
        groups = attribute_groups(r["attrs"], attr_names or None, reference=train_attrs, indexer=grouping["indexer"],
                                  specs=grouping["specs"])
        section["teachers"][name] = _teacher_section(plan, name, specs[name], r, primary, groups,
                                                     int(args.eval.bootstrap), int(args.seed),
                                                     grouping["exclude_unknown"])
        for i, key in enumerate(r["key"]):
            rows.append({"model": primary, "teacher": name, "key": key, "split": cfg.data.test_split,
                         "prompt": plan.prompt, **{k: r[k][i] for k in _COLS},
                         **{a: g[i] for a, g in groups.items()}})
    return section, rows


__all__ = ["SamPlan", "plan_sam", "run_sam", "sam_pass", "prompts_from_mask", "decode", "PROTOCOL"]
