"""`agglom export format=onnx`: the student with its adapter heads as one ONNX graph, checked before it is written.

``student.onnx`` takes ``image`` [batch, C, height, width] (normalised with the student's mean/std, as the timm
folder's ``pretrained_cfg`` states) and gives the named outputs of :func:`agglom.export.onnx_graph.output_names`:
``cls``, ``pooled`` and ``adapters`` (the three probe features of `agglom eval`'s ``eval.features``) and every
teacher's ``summary.<teacher>`` / ``spatial.<teacher>`` in that teacher's own feature space. The batch is dynamic,
and so is the image size for a student built with ``dynamic_img_size``; the sizes the export vouches for are the
validated range of the run's resolution evaluation, else the sizes it was trained at
(:mod:`agglom.export.input_sizes`), written in the graph's metadata (``agglom.input``) and refused outside by
:mod:`agglom.eval.onnx_encoder`.

The check: real batches of the run's test split, at every size the export vouches for (and a batch of one), run
through onnxruntime and through the PyTorch model itself (``AgglomModel.features`` and ``denormalise``, not the
traced module); the largest absolute difference over every output must be at most :data:`TOLERANCE` in fp32, or
nothing is exported. ``onnx_int8=true`` also writes ``student.int8.onnx`` (onnxruntime's dynamic int8 quantisation
of the weights); its difference from fp32 is reported, not bounded: `agglom eval` measures what it does per group.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import torch

from agglom.errors import ConfigError, ReadableError
from agglom.export.onnx_graph import FEATURE_OUTPUTS, OnnxStudent, reference_outputs, teacher_keys
from agglom.model.student import resize_input

ONNX_SCHEMA = "agglom.onnx/1"
DEFAULT_OPSET = 18
TOLERANCE = 1e-4  # max |ONNX - PyTorch| over every output, fp32
CHECK_SAMPLES = 32  # real test samples the check runs at each size
PIP_LINE = "pip install 'agglom[onnx]'  (or: pip install onnx onnxscript onnxruntime)"
FILES = {"fp32": "student.onnx", "int8": "student.int8.onnx"}


def _installed(module: str) -> bool:
    if module in sys.modules:  # imported already, or blocked (None)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def missing_onnx(modules: Sequence[str] = ("onnx", "onnxscript", "onnxruntime")) -> List[str]:
    """The ONNX packages that are not installed (the exporter needs all three; evaluation needs onnx and
    onnxruntime)."""
    return [m for m in modules if not _installed(m)]


def require_onnx(what: str, modules: Sequence[str] = ("onnx", "onnxscript", "onnxruntime")) -> None:
    """Refuse ``what`` (exit 2, before any work) when a needed ONNX package is missing, naming the pip line."""
    gone = missing_onnx(modules)
    if gone:
        raise ConfigError(f"{what} needs {', '.join(gone)}, which {'is' if len(gone) == 1 else 'are'} not installed "
                          f"here; run: {PIP_LINE}")


def supported_range(info: Mapping[str, Any]) -> Tuple[List[int], str]:
    """([lo, hi] px, where it comes from): the validated range of the run's resolution evaluation when it has one,
    else the sizes the student was trained at ('trained'); a fixed-size student takes its one size."""
    trained = [int(s) for s in info["trained_sizes"]]
    rng = info.get("validated_range")
    if info.get("dynamic_img_size") and rng:
        return [int(rng[0]), int(rng[1])], "validated"
    return [min(trained), max(trained)], "trained"


def check_sizes(info: Mapping[str, Any]) -> List[int]:
    """The input sizes the check runs at: both ends of the supported range and every training size in it."""
    lo, hi = supported_range(info)[0]
    return sorted({lo, hi, *[int(s) for s in info["trained_sizes"] if lo <= int(s) <= hi]})


def _trace(model: Any, example: torch.Tensor, opset: int, dynamic: bool) -> Any:
    """The ONNX ModelProto of :class:`OnnxStudent` (torch.export, dynamo exporter); batch always symbolic, height and
    width too for a dynamic-size student (multiples of the patch size)."""
    module = OnnxStudent(model).eval()
    batch = torch.export.Dim("batch", min=1, max=65536)
    shapes: Dict[int, Any] = {0: batch}
    if dynamic:
        p = int(model.student.patch_embed.patch_size[0])
        shapes.update({2: p * torch.export.Dim("grid_h", min=1, max=1024),
                       3: p * torch.export.Dim("grid_w", min=1, max=1024)})
    for name in ("torch.onnx", "onnxscript"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with torch.no_grad():
        program = torch.onnx.export(module, (example,), dynamo=True, input_names=["image"], output_names=module.names,
                                    dynamic_shapes=(shapes,), opset_version=int(opset), verbose=False)
    proto = program.model_proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    for i, name in enumerate(("batch", None, "height", "width")):
        if name and dims[i].dim_param:
            dims[i].dim_param = name
    return proto


def set_metadata(proto: Any, meta: Mapping[str, Any]) -> None:
    """Write ``meta`` into the graph's metadata_props (``agglom.<key>``, JSON values), replacing earlier ones."""
    keep = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith("agglom.")]
    del proto.metadata_props[:]
    for k, v in keep + [(f"agglom.{k}", v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v


def check_batches(cfg: Any, samples: int = CHECK_SAMPLES) -> List[torch.Tensor]:
    """Up to ``samples`` real images of the run's test split, as the reader gives them (normalised)."""
    from agglom.data.readers import eval_loader

    try:
        loader = eval_loader(cfg, cfg.data.test_split, batch_size=min(16, samples))
    except ConfigError as e:
        raise ConfigError(f"format=onnx checks the graph on real batches of the run's data and cannot read them ({e}); "
                          "give data_root=DIR where the run's dataset is") from None
    out, n = [], 0
    for batch in loader:
        out.append(batch["image"].float())
        n += out[-1].shape[0]
        if n >= samples:
            break
    if not out:
        raise ConfigError(f"format=onnx: no readable sample in the test split of {cfg.data.root} to check the graph on")
    return out


def compare(model: Any, session: Any, batches: Sequence[torch.Tensor], sizes: Sequence[int]) -> Dict[str, Any]:
    """Max |ONNX − PyTorch| per output and per size over ``batches`` (each also as a batch of one)."""
    per_output: Dict[str, float] = {}
    per_size: Dict[str, float] = {}
    for size in sizes:
        worst = 0.0
        for x in [*batches, batches[0][:1]]:
            x = resize_input(x, size)
            ref = reference_outputs(model, x)
            got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": x.numpy()})))
            for name, value in ref.items():
                d = float(np.abs(got[name] - value.float().numpy()).max())
                per_output[name] = max(per_output.get(name, 0.0), d)
                worst = max(worst, d)
        per_size[str(size)] = worst
    return {"max_abs_diff": max(per_output.values()), "per_output": per_output, "per_size": per_size,
            "samples": int(sum(x.shape[0] for x in batches)), "sizes": list(sizes)}


def session_for(path: Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session of ``path`` (``threads`` intra-op threads; 0: onnxruntime's choice)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads > 0:
        opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def latency(path: Path, shape: Sequence[int], runs: int = 10, threads: int = 1) -> float:
    """Median seconds per image of the graph at ``path`` on one image of ``shape`` [1, C, H, W], on ``threads``
    threads (three warm-up runs first)."""
    session = session_for(path, threads)
    x = np.random.default_rng(0).standard_normal(tuple(shape)).astype(np.float32)
    times = []
    for i in range(max(1, runs) + 3):
        t = time.perf_counter()
        session.run(None, {"image": x})
        if i >= 3:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def quantise_int8(src: Path, dst: Path, meta: Mapping[str, Any]) -> None:
    """onnxruntime's dynamic int8 quantisation of ``src``'s weights (activations quantised at run time) into ``dst``,
    with ``meta`` (quantisation named) in its metadata."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # its "consider pre-processing" advice would read like a failure
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
    proto = onnx.load(str(dst))
    set_metadata(proto, {**meta, "quantization": "onnxruntime dynamic int8 (weights QInt8, activations at run time)"})
    onnx.save_model(proto, str(dst))


def _metadata(model: Any, cfg: Any, info: Mapping[str, Any], opset: int) -> Dict[str, Any]:
    rng, source = supported_range(info)
    keys = teacher_keys(model.specs)
    outputs: Dict[str, Any] = {v: {"features": k} for k, v in FEATURE_OUTPUTS.items()}
    outputs.update({f"{kind}.{keys[s.name]}": {"teacher": s.name, "kind": kind, "space": "teacher"}
                    for s in model.specs for kind, on in (("summary", s.summary), ("spatial", s.spatial)) if on})
    c = model.student.patch_embed.proj.in_channels
    return {"schema": ONNX_SCHEMA, "opset": str(opset), "run": cfg.name, "quantization": "none (fp32)",
            "input": {"name": "image", "layout": "NCHW", "channels": c, "mean": list(cfg.student.mean)[:c],
                      "std": list(cfg.student.std)[:c], "dynamic_img_size": bool(info["dynamic_img_size"]),
                      "patch_size": info["patch_size"], "trained_sizes": info["trained_sizes"],
                      "validated_range": info.get("validated_range"), "supported_range": rng, "range_source": source},
            "outputs": outputs, "teachers": [s.to_dict() for s in model.specs],
            "recipe": {"student": {"model": cfg.student.model, "mean": list(cfg.student.mean), "std": list(cfg.student.std)},
                       "data": {"image_size": int(cfg.data.image_size), "grayscale": cfg.data.grayscale,
                                "resolutions": [int(s) for s in (cfg.data.get("resolutions") or [])]}}}


def export_onnx(model: Any, cfg: Any, info: Mapping[str, Any], out: Path, opset: int = DEFAULT_OPSET,
                int8: bool = False, runs: int = 10, threads: int = 1) -> Dict[str, Any]:
    """Write ``student.onnx`` (and ``student.int8.onnx``) into ``out`` after the check; returns what ``onnx.json``
    records. A check beyond :data:`TOLERANCE` raises :class:`ReadableError` (the caller discards the export)."""
    import onnx

    model = model.eval().cpu()
    batches = check_batches(cfg)
    sizes = check_sizes(info)
    meta = _metadata(model, cfg, info, opset)
    example = batches[0][:2] if batches[0].shape[0] > 1 else batches[0].repeat(2, 1, 1, 1)  # batch 1 would be fixed
    proto = _trace(model, resize_input(example, sizes[-1]), opset, bool(info["dynamic_img_size"]))
    set_metadata(proto, meta)
    proto.producer_name, proto.doc_string = "agglom", f"agglom student {cfg.name} with its adapter heads"
    path = Path(out) / FILES["fp32"]
    onnx.save_model(proto, str(path))
    session = session_for(path)
    check = compare(model, session, batches, sizes)
    if check["max_abs_diff"] > TOLERANCE:
        worst = max(check["per_output"], key=check["per_output"].get)
        raise ReadableError(f"ONNX check failed: onnxruntime differs from PyTorch by {check['max_abs_diff']:.3g} "
                            f"(output {worst!r}; sizes {check['per_size']}), over the {TOLERANCE:g} allowed in fp32; "
                            "nothing was exported. Try another opset= or report it with the run")
    c = int(meta["input"]["channels"])
    shape = (1, c, sizes[-1], sizes[-1])
    result = {"schema": ONNX_SCHEMA, "opset": int(opset), "file": FILES["fp32"], "bytes": path.stat().st_size,
              "check": {**check, "tolerance": TOLERANCE}, "input": meta["input"], "outputs": meta["outputs"],
              "latency_s_per_image": {"fp32": latency(path, shape, runs, threads)}, "latency_size": sizes[-1],
              "latency_threads": threads}
    set_metadata(proto, {**meta, "check": {"max_abs_diff": check["max_abs_diff"], "tolerance": TOLERANCE}})
    onnx.save_model(proto, str(path))
    if int8:
        result["int8"] = _int8(path, Path(out) / FILES["int8"], meta, session, batches, shape, runs, threads)
        result["latency_s_per_image"]["int8"] = result["int8"].pop("latency")
    return result


def _int8(src: Path, dst: Path, meta: Mapping[str, Any], fp32: Any, batches: Sequence[torch.Tensor],
          shape: Sequence[int], runs: int, threads: int) -> Dict[str, Any]:
    """Quantise, then measure the int8 graph against the fp32 one on the check's batches (reported, not bounded)."""
    quantise_int8(src, dst, meta)
    q = session_for(dst)
    worst = 0.0
    for x in batches:
        a, b = fp32.run(None, {"image": x.numpy()}), q.run(None, {"image": x.numpy()})
        worst = max(worst, *(float(np.abs(u - v).max()) for u, v in zip(a, b)))
    return {"file": dst.name, "bytes": dst.stat().st_size, "size_ratio": dst.stat().st_size / src.stat().st_size,
            "max_abs_diff_vs_fp32": worst, "latency": latency(dst, shape, runs, threads)}


def card_rows(result: Mapping[str, Any]) -> List[str]:
    """The model card's "ONNX" section."""
    inp, chk, lat = result["input"], result["check"], result["latency_s_per_image"]
    lo, hi = inp["supported_range"]
    rows = [f"`{result['file']}` (opset {result['opset']}, {result['bytes'] / 1e6:.2f} MB): input `image` "
            f"[batch, {inp['channels']}, height, width], normalised with mean {tuple(inp['mean'])} and std "
            f"{tuple(inp['std'])}; dynamic batch" + (f" and size, {lo}–{hi} px in multiples of {inp['patch_size']} "
                                                      f"({'validated range' if inp['range_source'] == 'validated' else 'the training size(s); no validated range was recorded'})"
                                                      if inp["dynamic_img_size"] else f", fixed size {lo} px") + ".",
            "", "Outputs: " + ", ".join(f"`{k}`" for k in result["outputs"]) + " (`cls`, `pooled`, `adapters`: the "
            "probe features of `agglom eval`'s eval.features; `summary.*` / `spatial.*`: each teacher's features in "
            "that teacher's own space).", "",
            f"Checked with onnxruntime against PyTorch on {chk['samples']} real test images at "
            f"{', '.join(map(str, chk['sizes']))} px (and a batch of one): max |Δ| = {chk['max_abs_diff']:.2e} "
            f"(allowed {chk['tolerance']:g}).", "",
            f"onnxruntime CPU latency, one image at {result['latency_size']} px on {result.get('latency_threads', 0) or 'its default'} "
            f"thread(s): fp32 {lat['fp32'] * 1e3:.2f} ms"]
    q = result.get("int8")
    if q:
        rows[-1] += (f"; int8 {lat['int8'] * 1e3:.2f} ms. `{q['file']}`: dynamic int8 quantisation "
                     f"({q['bytes'] / 1e6:.2f} MB, {q['size_ratio']:.2f} of fp32; max |Δ| against fp32 "
                     f"{q['max_abs_diff_vs_fp32']:.3g}); compare it per group with `agglom eval {q['file']} "
                     f"reference=<eval of {result['file']}>` before using it")
    rows[-1] += "."
    return rows


__all__ = ["export_onnx", "require_onnx", "missing_onnx", "supported_range", "check_sizes", "set_metadata",
           "session_for", "latency", "card_rows", "ONNX_SCHEMA", "DEFAULT_OPSET", "TOLERANCE", "PIP_LINE", "FILES"]
