"""`agglom export format=onnx`: the student with its adapter heads as one ONNX graph (dynamic batch and size, checked
against PyTorch on real batches), its int8 quantisation evaluated per group against it, and the energy section."""
import json
import sys

import numpy as np
import pytest
import torch

from agglom.cli import main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

DYNAMIC = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}"
QUICK_EVAL = ["eval.features=adapters", "eval.bootstrap=50", "eval.label_fractions=[1.0]", "eval.seeds=1"]


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory, synth_root, make_tiny_args):
    """A tiny dynamic-size student trained 2 steps at 16 and 32 px through the CLI, exported with format=onnx and
    onnx_int8=true."""
    out = tmp_path_factory.mktemp("onnx")
    args = make_tiny_args(out / "runs", synth_root, "dyn", 2, **{"student.model_args": DYNAMIC,
                                                                 "data.resolutions": "[16, 32]",
                                                                 "teachers": "[{name: tiny-clip}, {name: tiny-sam}]"})
    assert main(["train", *args]) == 0
    export = out / "export"
    assert main(["export", str(out / "runs" / "dyn"), f"out={export}", "format=onnx", "onnx_int8=true",
                 "latency_runs=2"]) == 0
    return out / "runs" / "dyn", export


def test_onnx_matches_torch_with_dynamic_batch_and_size(onnx_export):
    run, export = onnx_export
    from agglom.export.onnx_graph import reference_outputs
    from agglom.runs import load_run_model

    result = json.loads((export / "onnx.json").read_text())
    assert result["check"]["max_abs_diff"] <= 1e-4 and result["check"]["sizes"] == [16, 32]
    assert result["input"]["supported_range"] == [16, 32] and result["input"]["range_source"] == "trained"
    proto = onnx.load(str(export / "student.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["agglom.opset"] == "18" and any(o.version == 18 for o in proto.opset_import if o.domain == "")
    session = ort.InferenceSession(str(export / "student.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names[:3] == ["cls", "pooled", "adapters"] and "spatial.tiny-sam" in names and "summary.tiny-clip" in names
    model = load_run_model(run)
    gen = torch.Generator().manual_seed(1)
    for batch, size in ((1, 16), (3, 24), (5, 32)):  # batch sizes and a size the trace never saw
        x = torch.randn(batch, 3, size, size, generator=gen)
        got = dict(zip(names, session.run(None, {"image": x.numpy()})))
        ref = reference_outputs(model, x)
        assert set(ref) == set(names)
        assert max(float(np.abs(got[k] - ref[k].numpy()).max()) for k in names) <= 1e-4, (batch, size)
    card = (export / "README.md").read_text()
    assert "## ONNX" in card and "opset 18" in card and "max |Δ|" in card and "16–32 px" in card
    assert "## Compute and energy" in card and "J |" in card and "gCO2e" in card and "tiny-clip" in card
    cost = json.loads((export / "cost.json").read_text())
    assert cost["student"]["flops"] > 0 and cost["teachers"][0]["flops"] > cost["student"]["flops"]
    assert cost["training"]["kwh"] > 0 and cost["training"]["grid_gco2_per_kwh"] == 475.0


def test_int8_file_is_written_and_compared_per_group(onnx_export, synth_root, capsys):
    _, export = onnx_export
    result = json.loads((export / "onnx.json").read_text())
    q = result["int8"]
    assert (export / "student.int8.onnx").is_file() and 0 < q["size_ratio"] < 1
    fp32_eval = export / "eval-student"
    assert main(["eval", str(export / "student.onnx"), f"data_root={synth_root}", *QUICK_EVAL]) == 0
    assert (fp32_eval / "report.json").is_file()
    assert main(["eval", str(export / "student.int8.onnx"), f"data_root={synth_root}", f"reference={fp32_eval}",
                 *QUICK_EVAL]) == 0
    report = json.loads((export / "eval-student.int8" / "report.json").read_text())
    comparison = report["comparison"]
    assert comparison["reference"] == "student.onnx"
    site = comparison["attributes"]["site"]
    assert {"A", "B"} <= set(site["groups"]) and "levelled_down" in site and "delta" in site["auc_gap"]


def test_onnx_eval_refuses_what_the_graph_cannot_do(onnx_export, synth_root, capsys):
    _, export = onnx_export
    graph = str(export / "student.onnx")
    assert main(["eval", graph, f"data_root={synth_root}", "eval.dense=true"]) == 2
    assert "need the PyTorch model" in capsys.readouterr().err
    assert main(["eval", graph, f"data_root={synth_root}", "image_size=64", *QUICK_EVAL]) == 2
    assert "outside the sizes the export vouches for (16-32 px" in capsys.readouterr().err


def test_missing_onnxruntime_names_the_pip_line(onnx_export, tmp_path, monkeypatch, capsys):
    run, export = onnx_export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", str(run), f"out={tmp_path / 'e'}", "format=onnx"]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install 'agglom[onnx]'" in err and not (tmp_path / "e").exists()
    assert main(["eval", str(export / "student.onnx")]) == 2
    assert "pip install 'agglom[onnx]'" in capsys.readouterr().err


def test_a_failed_check_exports_nothing(onnx_export, tmp_path, monkeypatch, capsys):
    run, _ = onnx_export
    from agglom.export import onnx_export as ox

    real = ox.reference_outputs
    monkeypatch.setattr(ox, "reference_outputs", lambda m, x: {k: v + 1e-3 for k, v in real(m, x).items()})
    assert main(["export", str(run), f"out={tmp_path / 'e'}", "format=onnx", "latency_runs=1"]) == 1
    err = capsys.readouterr().err
    assert "ONNX check failed" in err and "nothing was exported" in err
    assert not (tmp_path / "e").exists() and list(tmp_path.iterdir()) == []


def test_options_are_checked(onnx_export, capsys):
    run, _ = onnx_export
    assert main(["export", str(run), "format=tflite", "opset=9", "tdp_watts=0"]) == 2
    err = capsys.readouterr().err
    assert "format='tflite': choose one of timm, onnx" in err and "opset=9" in err and "tdp_watts=0" in err
    assert main(["export", str(run), "onnx_int8=true"]) == 2
    assert "give format=onnx" in capsys.readouterr().err


def test_monitor_takes_the_onnx_graph(onnx_export, synth_root, tmp_path, capsys):
    """`agglom monitor` on the graph, with the reference split itself arriving as a batch: nothing moved."""
    import shutil

    _, export = onnx_export
    shutil.copytree(synth_root / "test", tmp_path / "incoming" / "2026-01-01")
    assert main(["monitor", str(export / "student.onnx"), f"reference={synth_root}",
                 f"incoming={tmp_path / 'incoming'}", "permutations=200"]) == 0
    report = json.loads((tmp_path / "incoming" / "monitor" / "report.json").read_text())
    assert report["model"] == "student.onnx" and report["embedding"] == "adapters" and not report["alarm"]
    assert report["batches"][0]["drift"]["overall"]["p"] > 0.5


@pytest.mark.parametrize("side,grid", [((2, 2), (4, 4)), ((4, 4), (4, 4)), ((6, 5), (4, 4)), ((3, 7), (4, 4)),
                                        ((9, 9), (2, 3))])
def test_the_graphs_resize_is_to_grid(side, grid):
    from agglom.export.onnx_graph import resize_to_grid
    from agglom.model.agglomerator import to_grid

    x = torch.randn(2, 3, *side, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(resize_to_grid(x, grid), to_grid(x, grid), atol=1e-6, rtol=1e-5)


def test_reexport_replaces_an_export_holding_onnx_evaluations(onnx_export):
    """Last in the file: it replaces the module's export. The eval-<graph>/ folders `agglom eval` wrote into it are
    agglom's, so force=true replaces the export with them."""
    run, export = onnx_export
    if not (export / "eval-student" / "report.json").is_file():
        (export / "eval-student").mkdir(exist_ok=True)
        (export / "eval-student" / "report.json").write_text(json.dumps({"schema": "agglom.eval/2"}))
    assert main(["export", str(run), f"out={export}", "latency_runs=1"]) == 0
    assert not (export / "eval-student").exists() and not (export / "student.onnx").exists()
