"""Zero-shot classification from prompts, scored per group with the report's fairness metrics.

The math, numpy/torch in and dicts out (the driver that picks encoders and text towers is
:mod:`agglom.eval.zero_shot.run`):

1. prompts per class (:func:`parse_prompts`): a single-label task takes ``{class: [prompt, ...]}`` where a class is
   a label value (``0``, ``1``, ...) or the datasheet's name for it; a multi-label task takes
   ``{label: {0: [...], 1: [...]}}`` (a negative and a positive class per label);
2. class embeddings (:func:`class_embeddings`): each prompt through the teacher's text tower, L2-normalised,
   averaged over the class's prompts and normalised again (CLIP's prompt ensembling);
3. class probabilities (:func:`zero_shot_probs`): ``softmax_k(logit_scale * cos(image, class_k) + logit_bias)``
   over a label's classes, where the image embedding is the teacher's own (the audit) or the student's summary
   adapter output for that teacher mapped back to the teacher's space. SigLIP's bias cancels in the softmax; the
   scale sets how sharp the probabilities are (and so ECE), never the ranking (AUC);
4. scores (:func:`label_scores`): a binary label's score is P(class 1); a K-class label gives one-vs-rest columns
   P(class k); a multi-label task one P(positive) column per label;
5. the section (:func:`zero_shot_section`): :func:`agglom.eval.metrics.evaluate_attributes` on the test split per
   attribute and proxy group (BCa intervals, the same metrics as the probe), at two thresholds: ``fixed_0.5``
   (for two classes: the argmax, zero-shot's own decision) and one chosen on the validation split
   (``val_<method>``), plus the validation headline.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from agglom.config.load import ConfigError
from agglom.eval.metrics import THRESHOLD_FIXED, choose_threshold, evaluate_attributes, headline

SCORING = ("softmax over a label's classes of logit_scale * cos(image embedding, class text embedding) + "
           "logit_bias; class text embedding = normalised mean of the class's normalised prompt embeddings")


class PromptError(ConfigError):
    """Prompts that do not fit the task (a user error: exit 2); the message says what is expected."""


def read_prompts(path: str | Path) -> Dict[str, Any]:
    """A prompts file (YAML or JSON mapping)."""
    import yaml

    from teachers.safe_yaml import YAMLInputError, load_file, read_text

    p = Path(path)
    if not p.exists():
        raise PromptError(f"zero-shot prompts file not found: {p}")
    try:
        data = json.loads(read_text(p)) if p.suffix == ".json" else load_file(p)
    except (YAMLInputError, yaml.YAMLError, ValueError, RecursionError) as e:
        raise PromptError(f"zero-shot prompts file {p}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, Mapping) or not data:
        raise PromptError(f"{p}: expected a mapping of class -> [prompt, ...] (multi-label: label -> {{0: [...], "
                          "1: [...]}})")
    return dict(data)


def _prompt_list(v: Any, where: str) -> List[str]:
    v = [v] if isinstance(v, str) else list(v) if isinstance(v, (list, tuple)) else None
    if not v or not all(isinstance(p, str) and p.strip() for p in v):
        raise PromptError(f"zero-shot prompts for {where}: expected a non-empty list of prompt strings")
    return v


def _class_index(key: Any, names: Optional[Sequence[str]], where: str) -> int:
    s = str(key)
    if s.lstrip("-").isdigit():
        return int(s)
    if names and s in list(names):
        return list(names).index(s)
    raise PromptError(f"zero-shot prompts: {where} {s!r} is neither a label value nor a class name"
                      + (f" ({', '.join(map(str, names))})" if names else ""))


def parse_prompts(prompts: Mapping[str, Any], multilabel: bool, label_names: Optional[Sequence[str]] = None,
                  num_labels: int = 1) -> Dict[Any, Dict[int, List[str]]]:
    """Normalise prompts to ``{head: {class index: [prompt, ...]}}``: one head ``None`` for a single-label task,
    one per label index for a multi-label task (class 0 negative, 1 positive)."""
    if not isinstance(prompts, Mapping) or not prompts:
        raise PromptError("zero-shot needs prompts: give zero_shot=FILE or set eval.zero_shot_prompts")
    if not multilabel:
        out = {_class_index(k, label_names, "class"): _prompt_list(v, f"class {k}") for k, v in prompts.items()}
        if len(out) < 2:
            raise PromptError("zero-shot prompts: give prompts for at least two classes")
        return {None: dict(sorted(out.items()))}
    names = list(label_names) if label_names else [f"label{i}" for i in range(num_labels)]
    heads: Dict[Any, Dict[int, List[str]]] = {}
    for k, v in prompts.items():
        j = _class_index(k, names, "label")
        if not isinstance(v, Mapping) or set(_class_index(c, ("negative", "positive"), "class") for c in v) != {0, 1}:
            raise PromptError(f"zero-shot prompts for label {k}: a multi-label task takes {{0: [negative prompts], "
                              f"1: [positive prompts]}} per label")
        heads[j] = {_class_index(c, ("negative", "positive"), "class"): _prompt_list(p, f"label {k} class {c}")
                    for c, p in v.items()}
    missing = [names[j] for j in range(num_labels) if j not in heads]
    if missing:
        raise PromptError(f"zero-shot prompts: no prompts for label(s) {', '.join(missing)}")
    return dict(sorted(heads.items()))


def class_embeddings(tower: Any, classes: Mapping[int, Sequence[str]]) -> torch.Tensor:
    """``[K, D]`` unit class embeddings in class-index order (prompt ensembling, see the module docstring)."""
    rows = []
    for _, prompts in sorted(classes.items()):
        e = F.normalize(tower(list(prompts)).double(), dim=-1).mean(0)
        rows.append(F.normalize(e, dim=-1))
    return torch.stack(rows)


def zero_shot_probs(image: Any, classes: torch.Tensor, logit_scale: float,
                    logit_bias: Optional[float] = None) -> np.ndarray:
    """``[N, K]`` class probabilities of image embeddings ``[N, D]`` against unit class embeddings ``[K, D]``."""
    img = F.normalize(torch.as_tensor(np.asarray(image), dtype=torch.float64), dim=-1)
    logits = float(logit_scale) * img @ classes.to(torch.float64).T + float(logit_bias or 0.0)
    return torch.softmax(logits, dim=-1).numpy()


def label_scores(y: np.ndarray, probs: Mapping[Any, np.ndarray], heads: Mapping[Any, Mapping[int, Any]],
                 label_names: Optional[Sequence[str]] = None) -> Tuple[np.ndarray, np.ndarray, Optional[List[str]]]:
    """(binary targets, scores, per-column names) from the class probabilities of each head (see module doc)."""
    if None in heads:  # single label
        classes = list(heads[None])
        p = probs[None]
        present = sorted(set(np.asarray(y).astype(int).tolist()))
        unknown = [c for c in present if c not in classes]
        if unknown:
            raise PromptError(f"zero-shot prompts: the data hold label value(s) {unknown} without prompts")
        if classes == [0, 1]:
            return np.asarray(y).astype(int), p[:, 1], None
        names = [(label_names[c] if label_names and c < len(label_names) else f"class{c}") for c in classes]
        return (np.asarray(y)[:, None] == np.asarray(classes)[None, :]).astype(int), p, names
    cols = sorted(heads)
    names = [(label_names[j] if label_names and j < len(label_names) else f"label{j}") for j in cols]
    return np.asarray(y)[:, cols].astype(int), np.stack([probs[j][:, 1] for j in cols], 1), names


def zero_shot_section(kind: str, via: str, y_val: np.ndarray, s_val: np.ndarray, y_test: np.ndarray,
                      s_test: np.ndarray, groups_val: Mapping[str, np.ndarray], groups_test: Mapping[str, np.ndarray],
                      ev: Any, seed: int = 0, exclude_unknown: bool = True,
                      label_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """One model's zero-shot report entry: test metrics per attribute (BCa intervals), thresholds (fixed 0.5 and
    chosen on validation), the validation headline. ``ev``: the eval config (bootstrap, ece_binnings,
    threshold_method, optimistic_f1)."""
    multi = y_test.ndim == 2
    yv, sv = (y_val, s_val) if multi else (y_val[:, None], s_val[:, None])
    method = ev.threshold_method
    chosen = [choose_threshold(yv[:, j], sv[:, j], method) for j in range(yv.shape[1])]
    thresholds: Dict[str, Any] = {THRESHOLD_FIXED: [0.5] * len(chosen) if multi else 0.5,
                                  f"val_{method}": chosen if multi else float(chosen[0])}
    kw = dict(thresholds=thresholds, ece_binnings=list(ev.ece_binnings), exclude_unknown=exclude_unknown,
              label_names=label_names)
    attributes = evaluate_attributes(y_test, s_test, groups_test, optimistic_f1=ev.optimistic_f1,
                                     n_boot=int(ev.bootstrap), seed=seed, **kw)
    kw["ece_binnings"] = ["range10"]
    val = evaluate_attributes(y_val, s_val, groups_val, n_boot=0, **kw)
    return {"kind": kind, "via": via, "attributes": attributes, "validation": {a: headline(r) for a, r in val.items()},
            "thresholds": thresholds, "n_val": int(len(y_val)), "n_test": int(len(y_test))}


__all__ = ["SCORING", "PromptError", "read_prompts", "parse_prompts", "class_embeddings", "zero_shot_probs",
           "label_scores", "zero_shot_section"]
