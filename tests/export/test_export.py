"""Export: a timm folder that loads without agglom, the adapter pack, the model card."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agglom.cli import main
from agglom.export import load_adapter_pack
from agglom.runs import load_run_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, synth_root, make_tiny_args):
    tiny_args = make_tiny_args

    out = tmp_path_factory.mktemp("runs")
    args = tiny_args(out, synth_root, "exp", 4, **{"data.epoch_samples": 64, "heads.normaliser": "phis",
                                                   "teachers": "[{name: tiny-clip}, {name: tiny-sam, spatial: false}]",
                                                   "heads.summary": "attn", "optim.ema": 0.5})
    assert main(["train", *args]) == 0
    return out / "exp"


def test_export_loads_with_timm_alone_and_matches(trained_run, tmp_path):
    export = tmp_path / "export"
    assert main(["export", str(trained_run), f"out={export}", "min_group_count=1000"]) == 0
    assert {p.name for p in export.iterdir()} >= {"config.json", "model.safetensors", "adapters.safetensors",
                                                  "adapters.json", "README.md"}
    conf = json.loads((export / "config.json").read_text())
    assert conf["architecture"] == "vit_small_patch16_224" and conf["num_classes"] == 0
    assert conf["pretrained_cfg"]["input_size"] == [3, 32, 32] and "hf_hub_id" not in conf["pretrained_cfg"]
    model = load_run_model(trained_run)  # EMA weights, as exported
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model.student.forward_features(x).numpy())
    script = f"""
import sys
sys.modules['agglom'] = None  # agglom must not be needed
sys.modules['teachers'] = None
import numpy as np, timm, torch
m = timm.create_model('local-dir:{export}', pretrained=True).eval()
x = torch.from_numpy(np.load('{tmp_path / "x.npy"}'))
with torch.no_grad():
    y = m.forward_features(x).numpy()
exp = np.load('{tmp_path / "expected.npy"}')
assert y.shape == exp.shape, (y.shape, exp.shape)
assert np.array_equal(y, exp), np.abs(y - exp).max()
assert tuple(m.pretrained_cfg['mean']) == (0.5, 0.5, 0.5)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_adapter_pack_round_trip(trained_run, tmp_path):
    export = tmp_path / "export"
    assert main(["export", str(trained_run), f"out={export}"]) == 0
    pack = load_adapter_pack(export)
    model = load_run_model(trained_run)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
    got = pack(x, normalised=True)
    for name in ref:
        for kind in ref[name]:
            torch.testing.assert_close(got[name][kind], ref[name][kind], rtol=0, atol=0)
    teacher_space = pack(x)
    # teacher-space predictions are the inverse normaliser of the normalised ones
    torch.testing.assert_close(model.summary_norms["tiny-clip"](teacher_space["tiny-clip"]["summary"]),
                               ref["tiny-clip"]["summary"], atol=1e-4, rtol=1e-4)
    assert "spatial" not in got["tiny-sam"]
    meta = json.loads((export / "adapters.json").read_text())
    assert [t["name"] for t in meta["teachers"]] == ["tiny-clip", "tiny-sam"] and all(t["digest"] for t in meta["teachers"])


def test_model_card_suppresses_small_groups_and_records_compute(trained_run, tmp_path):
    export = tmp_path / "card"
    assert main(["export", str(trained_run), f"out={export}", "min_group_count=100"]) == 0
    card = (export / "README.md").read_text()
    for section in ("## Teachers", "## Training data", "## Objective", "## Compute", "## Intended use and limitations"):
        assert section in card
    assert "tiny-clip" in card and "open_clip" in card
    assert "B: <100 (suppressed)" in card  # the rare site (~8% of 168 training samples)
    assert "A: " in card and "device-hours" in card and "estimated training FLOPs" in card


def test_push_to_hub_is_skipped_offline(trained_run, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["export", str(trained_run), f"out={tmp_path / 'e'}", "push_to_hub=someone/student"]) == 0
    assert "not pushing" in capsys.readouterr().out


def test_reexport_replaces_only_an_agglom_export(trained_run, tmp_path, capsys):
    """force=true (the default) replaces the export agglom wrote, with the report `agglom eval <export>` left in its
    eval/ folder; a file the export did not write refuses the replacement and survives."""
    export = tmp_path / "export"
    assert main(["export", str(trained_run), f"out={export}"]) == 0
    marker = json.loads((export / "agglom.json").read_text())
    assert {"agglom.json", "config.json", "model.safetensors", "README.md"} <= set(marker["files"])
    (export / "eval").mkdir()
    (export / "eval" / "report.json").write_text(json.dumps({"schema": "agglom.eval/2"}))
    assert main(["export", str(trained_run), f"out={export}"]) == 0
    assert not (export / "eval").exists() and [p.name for p in tmp_path.iterdir()] == ["export"]
    (export / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", str(trained_run), f"out={export}"]) == 2
    err = capsys.readouterr().err
    assert "did not write (notes.txt)" in err and "Traceback" not in err
    assert (export / "notes.txt").read_text() == "mine" and (export / "config.json").is_file()
