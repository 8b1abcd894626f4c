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


def _tiny_student(dynamic: bool):
    from omegaconf import OmegaConf

    from agglom.model.student import build_student

    args = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2, "dynamic_img_size": dynamic}
    return build_student(OmegaConf.create({"model": "vit_small_patch16_224", "pretrained": False, "checkpoint": None,
                                           "model_args": args, "mean": [0.5] * 3, "std": [0.5] * 3}), 32, 3, 0)


def test_switch_flag_fires_on_a_crafted_curve_and_not_on_smooth_ones():
    from agglom.eval.resolution.resolution import eval_sizes, find_switches

    sizes = [16, 32, 64, 128]
    sw = find_switches(sizes, [0.90, 0.91, 0.90, 0.55], tol=0.02, jump=3.0)  # falls off a cliff at 128 px
    assert [(s["from"], s["to"]) for s in sw] == [(64, 128)] and sw[0]["change"] == pytest.approx(-0.35)
    assert find_switches(sizes, [0.55, 0.90, 0.91, 0.90]) != []  # a jump up is a change of character too
    assert find_switches(sizes, [0.80, 0.85, 0.88, 0.90]) == []  # smooth
    assert find_switches(sizes, [0.60, 0.75, 0.90, 0.75]) == []  # smooth degradation away from the best size
    assert find_switches(sizes, [0.900, 0.905, 0.899, 0.902]) == []  # flat: changes below tol are noise
    assert find_switches([16, 32], [0.9, 0.1]) == []  # two sizes: nothing to compare with
    # per octave: a change over two octaves counts half per octave
    assert find_switches([16, 32, 64, 256], [0.90, 0.88, 0.86, 0.80]) == []
    assert eval_sizes(32, [0.5, 1, 2], 8) == [16, 32, 64] and eval_sizes(64, [0.3, 1, 1.01], 16) == [16, 64]


def test_validated_range_is_contiguous_around_the_training_size():
    from agglom.eval.resolution.resolution import resolution_section, validated_range

    sizes = [16, 32, 64]
    single = resolution_section(32, [0.5, 1, 2], sizes, 64, {"t/summary": [0.6, 0.9, 0.55]}, [0.7, 0.8, 0.7],
                                {"site": [0.6, 0.7, 0.6]})
    assert single["switches"] == [] and single["validated_range"] == [32, 32]
    assert single["within_tol"]["fidelity:t/summary"] == [False, True, False]
    multi = resolution_section(32, [0.5, 1, 2], sizes, 64, {"t/summary": [0.89, 0.9, 0.895], "t/spatial": [0.5, 0.5,
                                                                                                             None]},
                               [0.8, 0.8, 0.8], {})
    assert multi["validated_range"] == [16, 64] and multi["switches"] == []
    # a nearly constant teacher output (R² far below 0) counts as 0 everywhere: it neither flags nor fails a size
    flat = resolution_section(32, [0.5, 1, 2], sizes, 64, {"t/summary": [-42.0, -40.0, -41.0]}, [0.8] * 3, {})
    assert flat["switches"] == [] and flat["validated_range"] == [16, 64]
    # probe curves are reported, not flagged, when fidelity curves exist
    noisy = resolution_section(32, [0.5, 1, 2, 4], [16, 32, 64, 128], 128, {"t/summary": [0.9] * 4},
                               [0.8, 0.8, 0.8, 0.5], {"site": [0.8, 0.4, 0.8, 0.8]})
    assert noisy["switches"] == [] and noisy["validated_range"] == [16, 128]
    # out of tolerance at the training size: no range; a switch cuts the range even within tolerance
    assert validated_range(sizes, {"a": [0.9, 0.5, 0.9]}, 32, 0.02) is None
    assert validated_range(sizes, {"a": [0.9, 0.9, 0.9]}, 32, 0.02, [{"from": 32, "to": 64}]) == [16, 32]
    # no fidelity curve: the probe AUC decides
    probe_only = resolution_section(32, [0.5, 1, 2], sizes, 64, {}, [0.5, 0.8, 0.79], {})
    assert probe_only["validated_range"] == [32, 64]


def test_resolution_eval_refuses_a_fixed_size_student():
    from types import SimpleNamespace

    from agglom.config.load import ConfigError
    from agglom.eval.resolution.run import check_resolution_eval

    with pytest.raises(ConfigError, match="eval.resolutions.*dynamic_img_size"):
        check_resolution_eval(SimpleNamespace(student=_tiny_student(False)), [0.5, 1, 2])
    check_resolution_eval(SimpleNamespace(student=_tiny_student(True)), [0.5, 1, 2])


def test_bad_resolution_values_exit_2_naming_the_key(dyn_run, capsys):
    assert main(["eval", str(dyn_run), "eval.resolutions=[0.5,-1]"]) == 2
    assert "eval.resolutions" in capsys.readouterr().err
    # multiples, not pixel sizes: [64, 128, 256] would read a 128-px run at 32,768 px; refused before any work
    assert main(["eval", str(dyn_run), "eval.resolutions=[64,128,256]"]) == 2
    assert "eval.resolutions" in capsys.readouterr().err


def _eval_resolutions(run, out, multiples: str) -> dict:
    """``agglom eval run eval.resolutions=<multiples>`` (no bootstrap, no label fractions) -> its report.json."""
    assert main(["eval", str(run), f"eval.resolutions={multiples}", "eval.bootstrap=0", "eval.label_fractions=[]",
                 "num_workers=0", f"out={out}"]) == 0
    return json.loads((out / "report.json").read_text())


def test_eval_writes_the_resolution_section_and_the_card_states_the_range(dyn_run, tmp_path):
    out = tmp_path / "eval"
    report = _eval_resolutions(dyn_run, out, "[0.5,1,2]")
    sec = report["resolution"]
    assert sec["sizes"] == [16, 32, 64] and sec["base"] == 32 and sec["read_at"] == 64
    assert set(sec["fidelity"]) == {"tiny-clip/summary", "tiny-clip/spatial", "tiny-dinov2/summary",
                                    "tiny-dinov2/spatial"}
    assert all(len(v) == 3 for v in sec["fidelity"].values()) and len(sec["probe"]["auc"]) == 3
    assert all(v is not None and 0 <= v <= 1 for v in sec["probe"]["auc"])
    assert "site" in sec["probe"]["worst_group_auc"] and "rule" in sec
    assert (out / "resolution.png").is_file() and "## Resolution" in (out / "report.md").read_text()
    # the fidelity at the training size differs from the other sizes: the curve measures the student, not the teacher
    clip = sec["fidelity"]["tiny-clip/spatial"]
    assert len(set(round(v, 6) for v in clip)) == 3
    # the export states what the run's report measured
    (dyn_run / "eval").mkdir(exist_ok=True)
    (dyn_run / "eval" / "report.json").write_text((out / "report.json").read_text())
    export = tmp_path / "export"
    assert main(["export", str(dyn_run), f"out={export}"]) == 0
    recorded = json.loads((export / "config.json").read_text())["agglom_input_sizes"]
    assert recorded["evaluated_sizes"] == [16, 32, 64] and recorded["validated_range"] == sec["validated_range"]
    assert "Validated range:" in (export / "README.md").read_text()
    (dyn_run / "eval" / "report.json").unlink()


def test_resolution_curve_at_the_read_size_matches_the_main_fidelity(dyn_run, tmp_path):
    """Read at the training size (no multiple above 1), the 1x point is the main evaluation's own fidelity."""
    out = tmp_path / "eval"
    report = _eval_resolutions(dyn_run, out, "[0.5,1]")
    sec = report["resolution"]
    assert sec["read_at"] == 32 and sec["sizes"] == [16, 32]
    attr = next(iter(report["fidelity"]))
    for key, vals in sec["fidelity"].items():
        assert vals[1] == pytest.approx(report["fidelity"][attr][key]["overall"]["value"], abs=1e-9)


def test_multiples_are_relative_to_the_trained_size_not_the_read_size():
    """A run read at 64 px but trained at 32 (``data.resolutions=[32]``): [0.5, 1, 2] are 16, 32, 64 px."""
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from agglom.eval.resolution.resolution import eval_sizes
    from agglom.eval.resolution.run import training_size

    model = SimpleNamespace(student=_tiny_student(True))  # recorded input size 32 px
    read64 = OmegaConf.create({"data": {"image_size": 64, "resolutions": [32]}})
    assert training_size(model, read64) == 32 and eval_sizes(32, [0.5, 1, 2], 8) == [16, 32, 64]
    assert training_size(model, OmegaConf.create({"data": {"image_size": 64, "resolutions": [16, 64, 32]}})) == 64
    assert training_size(model, OmegaConf.create({"data": {"image_size": 64, "resolutions": []}})) == 32
