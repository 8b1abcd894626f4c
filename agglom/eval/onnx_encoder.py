"""An exported ONNX student (``student.onnx``, ``student.int8.onnx``: :mod:`agglom.export.onnx_export`) as the model
`agglom eval` and `agglom monitor` evaluate: ``features(x, kind)`` reads the graph's ``cls`` / ``pooled`` /
``adapters`` output through onnxruntime, so the probe protocol, the per-group report and the paired comparison
with ``reference=`` are the same as for a run or an export folder. That comparison is how an int8 graph is judged
against its fp32 one: ``agglom eval student.int8.onnx reference=<the fp32 graph's eval folder>`` says per group
whether quantisation widened a gap or levelled a group down.

The graph's metadata (``agglom.*``) carries what the evaluation needs besides the weights: the student's
normalisation, training size(s) and channels (the reader's settings) and the input sizes the export vouches for;
a size outside them is refused. Sections that need the PyTorch model are refused before any work (the dense probe,
the resolution test, SAM prompts, zero-shot, fidelity: the graph has no normalisers or text towers).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from agglom.errors import ConfigError

ONNX_SCHEMA_PREFIX = "agglom.onnx/"
KIND_OUTPUT = {"summary": "cls", "pooled": "pooled", "adapters": "adapters"}  # eval.features -> output name


def is_onnx(path: Any) -> bool:
    """Whether ``path`` names an ONNX file (by its suffix): `agglom eval` and `agglom monitor` take one as model."""
    return Path(str(path)).suffix.lower() == ".onnx"


def read_metadata(path: Path) -> Dict[str, Any]:
    """The graph's ``agglom.*`` metadata (JSON values parsed), without loading its weights into a session."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: one line naming it
        raise ConfigError(f"{path}: not a readable ONNX model ({str(e).splitlines()[0][:160]})") from None
    meta: Dict[str, Any] = {}
    for p in proto.metadata_props:
        if p.key.startswith("agglom."):
            try:
                meta[p.key[len("agglom."):]] = json.loads(p.value)
            except ValueError:
                meta[p.key[len("agglom."):]] = p.value
    if not str(meta.get("schema", "")).startswith(ONNX_SCHEMA_PREFIX):
        raise ConfigError(f"{path}: not an agglom ONNX export (no agglom.schema in its metadata); export one with "
                          "`agglom export RUN format=onnx`")
    return meta


class OnnxModel:
    """The ONNX student behind the ``features(x, kind)`` interface of :class:`agglom.model.AgglomModel`."""

    specs: List[Any] = []  # no adapter pack in PyTorch: fidelity has nothing to measure
    teacher_names: List[str] = []

    def __init__(self, path: Path, meta: Dict[str, Any], session: Any) -> None:
        self.path, self.meta, self.session = Path(path), meta, session
        self.outputs = [o.name for o in session.get_outputs()]
        self.range = [int(v) for v in meta["input"]["supported_range"]]
        self._last: Optional[Tuple[Any, Dict[str, np.ndarray]]] = None

    def to(self, device: Any) -> "OnnxModel":
        return self  # onnxruntime on the CPU; batches are moved back to it

    def eval(self) -> "OnnxModel":
        return self

    def __call__(self, x: torch.Tensor) -> Dict[str, Any]:
        return {}  # no per-teacher predictions in normalised space (what fidelity compares)

    def _check_size(self, x: torch.Tensor) -> None:
        lo, hi = self.range
        h, w = int(x.shape[-2]), int(x.shape[-1])
        if not (lo <= h <= hi and lo <= w <= hi):
            raise ConfigError(f"{self.path.name}: input {h}x{w} px is outside the sizes the export vouches for "
                              f"({lo}-{hi} px, {self.meta['input'].get('range_source')}); evaluate at image_size="
                              f"{hi} or export with a validated range (agglom eval RUN eval.resolutions=[...])")

    def run(self, x: torch.Tensor) -> Dict[str, np.ndarray]:
        """Every output for the batch ``x`` (memoised for the last batch, so several kinds cost one run)."""
        key = (x.data_ptr(), tuple(x.shape))
        if self._last is None or self._last[0] != key:
            self._check_size(x)
            arr = x.detach().float().cpu().numpy()
            self._last = (key, dict(zip(self.outputs, self.session.run(None, {"image": arr}))))
        return self._last[1]

    def features(self, x: torch.Tensor, kind: str = "summary") -> torch.Tensor:
        """The probe features ``kind`` (eval.features) of the batch, as a tensor on ``x``'s device."""
        name = KIND_OUTPUT.get(kind)
        if name is None or name not in self.outputs:
            raise ConfigError(f"eval.features={kind!r}: {self.path.name} has outputs {', '.join(self.outputs)}; "
                              f"choose one of {', '.join(k for k, v in KIND_OUTPUT.items() if v in self.outputs)}")
        return torch.from_numpy(self.run(x)[name]).to(x.device)


def load_onnx_model(path: Path) -> OnnxModel:
    """The ONNX student of ``path`` in an onnxruntime CPU session (exit 2 naming the pip line without it)."""
    from agglom.export.onnx_export import require_onnx, session_for

    require_onnx(f"evaluating {Path(path).name}", ("onnx", "onnxruntime"))
    meta = read_metadata(Path(path))
    return OnnxModel(Path(path), meta, session_for(Path(path)))


def onnx_recipe(meta: Dict[str, Any]) -> Any:
    """A default recipe with the graph's student and data settings (as `agglom eval` builds one for an export)."""
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe

    rec = meta.get("recipe") or {}
    return OmegaConf.merge(OmegaConf.structured(Recipe), {"student": rec.get("student", {}), "data": rec.get("data", {})})


UNSUPPORTED = (("dense", "eval.dense=true"), ("sam_prompts", "eval.sam_prompts=true"),
               ("resolutions", "eval.resolutions"))


def check_onnx_eval(args: Any) -> None:
    """Refuse, before any work, what an ONNX graph cannot be evaluated for (it has no PyTorch model)."""
    asked = [what for key, what in UNSUPPORTED if args.eval.get(key)]
    if args.zero_shot:
        asked.append("zero_shot=")
    if asked:
        raise ConfigError(f"eval of an ONNX graph ({Path(args.run).name}): {', '.join(asked)} need the PyTorch model; "
                          "evaluate the export folder or the run for them (the ONNX graph gives the probe report and "
                          "the comparison with reference=)")


def load_onnx_primary(args: Any) -> Tuple[Any, OnnxModel, str]:
    """(recipe, model, model name) of ``args.run`` = an ONNX file, for :func:`agglom.eval.run.run_evaluation`."""
    check_onnx_eval(args)
    model = load_onnx_model(Path(args.run))
    return onnx_recipe(model.meta), model, Path(args.run).name


def default_out(path: Path) -> Path:
    """Where the evaluation of an ONNX file writes by default: ``eval-<file stem>/`` beside it."""
    return Path(path).parent / f"eval-{Path(path).stem}"


__all__ = ["OnnxModel", "is_onnx", "read_metadata", "load_onnx_model", "load_onnx_primary", "onnx_recipe",
           "check_onnx_eval", "default_out", "KIND_OUTPUT"]
