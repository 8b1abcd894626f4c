"""Resolution: the exported student at other input sizes (timm alone), and the eval's resolution curve."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from agglom.cli import main
from agglom.runs import load_run_model

DYNAMIC = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}"


@pytest.fixture(scope="module")
def dyn_run(tmp_path_factory, synth_root, make_tiny_args):
    """A seconds-long run of a dynamic-size tiny student at 32 px."""
    out = tmp_path_factory.mktemp("runs")
    args = make_tiny_args(out, synth_root, "dyn", 4, **{"data.epoch_samples": 64, "student.model_args": DYNAMIC,
                                                       "teachers": "[{name: tiny-clip}, {name: tiny-dinov2}]"})
    assert main(["train", *args]) == 0
    return out / "dyn"


def test_export_records_sizes_and_loads_with_timm_alone_at_twice_the_size(dyn_run, tmp_path):
    export = tmp_path / "export"
    assert main(["export", str(dyn_run), f"out={export}"]) == 0
    conf = json.loads((export / "config.json").read_text())
    sizes = conf["agglom_input_sizes"]
    assert sizes["dynamic_img_size"] is True and sizes["patch_size"] == 8 and sizes["trained_sizes"] == [32]
    assert sizes["validated_range"] is None  # no resolution eval yet
    assert conf["pretrained_cfg"]["fixed_input_size"] is False
    card = (export / "README.md").read_text()
    assert "## Input sizes" in card and "Dynamic input size" in card and "Validated range: not measured" in card
    model = load_run_model(dyn_run)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))  # 2x the training size
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        np.save(tmp_path / "expected.npy", model.student.forward_features(x).numpy())
    prefix = model.student.num_prefix_tokens
    script = f"""
import sys
sys.modules['agglom'] = None
sys.modules['teachers'] = None
import numpy as np, timm, torch
m = timm.create_model('local-dir:{export}', pretrained=True).eval()
x = torch.from_numpy(np.load('{tmp_path / "x.npy"}'))
with torch.no_grad():
    y = m.forward_features(x).numpy()
assert y.shape == (2, {prefix} + 8 * 8, 32), y.shape  # a 64 px input: an 8 x 8 grid of 8 px patches
exp = np.load('{tmp_path / "expected.npy"}')
assert np.allclose(y, exp, atol=1e-5), np.abs(y - exp).max()
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_fixed_size_student_is_recorded_as_fixed(tmp_path, synth_root, make_tiny_args):
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe
    from agglom.export.input_sizes import card_rows, input_sizes
    from agglom.model.student import build_student

    cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {"data": {"image_size": 32}})
    student = build_student(OmegaConf.create({"model": "vit_small_patch16_224", "pretrained": False, "checkpoint": None,
                                              "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 1,
                                                             "num_heads": 2}, "mean": [0.5] * 3, "std": [0.5] * 3}),
                            32, 3, 0)
    info = input_sizes(student, cfg)
    assert info["dynamic_img_size"] is False and info["trained_sizes"] == [32]
    assert card_rows(info)[0].startswith("Fixed input size: 32 px")
