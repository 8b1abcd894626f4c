"""`agglom export run=<dir> [out=<dir>] [format=onnx onnx_int8=true]`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from agglom.commands import Command


@dataclass
class ExportArgs:
    run: str = ""
    out: Optional[str] = None  # default: <run>/export
    ema: bool = True  # export EMA weights when the run kept them
    checkpoint: Optional[str] = None
    min_group_count: int = 10
    push_to_hub: Optional[str] = None
    force: bool = True
    # timm: the timm folder + adapter pack + card; onnx: the same, plus student.onnx (the student with its adapter
    # heads, checked against PyTorch on the run's data; needs `pip install 'agglom[onnx]'`)
    format: str = "timm"
    onnx_int8: bool = False  # format=onnx: also student.int8.onnx (onnxruntime dynamic int8 quantisation)
    opset: int = 18  # format=onnx: the ONNX opset
    data_root: Optional[str] = None  # format=onnx: where the run's dataset is now (the check reads real batches)
    # the model card's energy estimates (agglom.export.cost): the power behind the per-image figure (W; default a
    # 65 W desktop CPU), the power while training (W; default 65 on CPU, 300 on a GPU) and the grid's carbon
    # intensity (gCO2e per kWh; default 475, the world average)
    tdp_watts: float = 65.0
    train_watts: Optional[float] = None
    grid_gco2_per_kwh: float = 475.0
    latency_runs: int = 10  # timed forwards behind each latency figure
    latency_threads: int = 1  # CPU threads the latencies are measured on (0: PyTorch's / onnxruntime's own count)


def _run(cfg) -> int:
    from pathlib import Path

    from agglom.config.load import ConfigError
    from agglom.export.timm_folder import export_run, push_to_hub

    if not cfg.run:
        raise ConfigError("export: give run=<run dir>")
    onnx = None
    if cfg.format == "onnx":
        from agglom.export.onnx_export import require_onnx

        require_onnx("format=onnx")
        onnx = {"opset": cfg.opset, "int8": cfg.onnx_int8, "runs": cfg.latency_runs, "threads": cfg.latency_threads}
    elif cfg.onnx_int8:
        raise ConfigError("onnx_int8=true quantises the ONNX graph: give format=onnx with it")
    cost = {"tdp_watts": cfg.tdp_watts, "train_watts": cfg.train_watts, "grid_intensity": cfg.grid_gco2_per_kwh,
            "runs": cfg.latency_runs, "n_threads": cfg.latency_threads}
    out = export_run(Path(cfg.run), Path(cfg.out) if cfg.out else None, use_ema=cfg.ema, force=cfg.force,
                     min_group_count=cfg.min_group_count, checkpoint=Path(cfg.checkpoint) if cfg.checkpoint else None,
                     onnx=onnx, cost=cost, data_root=cfg.data_root)
    print(f"agglom export: {out}\n  timm: timm.create_model('local-dir:{out.resolve()}', pretrained=True)\n"
          f"  adapters: agglom.export.load_adapter_pack('{out}')\n  model card: {out / 'README.md'}")
    if onnx is not None:
        _print_onnx(out)
    if cfg.push_to_hub:
        push_to_hub(out, cfg.push_to_hub)
    return 0


def _print_onnx(out) -> None:
    import json

    r = json.loads((out / "onnx.json").read_text())
    lo, hi = r["input"]["supported_range"]
    print(f"  onnx: {out / r['file']} (opset {r['opset']}, sizes {lo}-{hi} px, dynamic batch); onnxruntime vs "
          f"PyTorch max |d| = {r['check']['max_abs_diff']:.2e} on {r['check']['samples']} test images "
          f"(allowed {r['check']['tolerance']:g})")
    if "int8" in r:
        q = r["int8"]
        print(f"  onnx int8: {out / q['file']} ({q['size_ratio']:.2f} of the fp32 size; max |d| vs fp32 "
              f"{q['max_abs_diff_vs_fp32']:.3g}); compare per group: agglom eval {out / q['file']} "
              f"reference=<eval of {r['file']}>")


export = Command(schema=ExportArgs, run=_run, help="export a run's student as a timm folder + adapter pack + model card "
                 "(format=onnx: + an ONNX graph of the student with its adapter heads)", positional="run")
