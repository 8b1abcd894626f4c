"""A run folder someone sent: hostile pickles in its checkpoint are refused by `agglom export`, `agglom eval` and a
resume, with one line naming the file, and nothing in them runs.

The run's config.yaml chooses the engine that reads the checkpoint, so the DeepSpeed engine's files (its model
states, the ZeRO optimiser states) are attacked as well as the torch engine's; the torch engine's resume is
covered by tests/train/test_run_safety.py. A genuine DeepSpeed run still exports, consolidates as DeepSpeed itself
does, and resumes.
"""
from __future__ import annotations

import os
import pickle
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from agglom.cli import main
from agglom.engine.safe_checkpoint import (
    deepspeed_loads_made_safe,
    deepspeed_safe_globals,
    load_deepspeed_file,
)
from teachers.safe_load import UnsafeCheckpointError

ROOT = Path(__file__).resolve().parents[2]
FAST_EVAL = ["eval.bootstrap=20", "eval.label_fractions=[0.1,1.0]", "eval.seeds=1", "num_workers=0"]
MODEL_STATES = "mp_rank_00_model_states.pt"
OPTIM_STATES = "zero_pp_rank_0_mp_rank_00_optim_states.pt"
# what a one-process DeepSpeed engine fills in and a refused resume (which never reaches engine.close) leaves set
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class _Payload:
    """Unpickling this runs ``touch <marker>`` through os.system, as the tester's exploit did."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _plant(path: Path, marker: Path, raw: bool = False) -> None:
    """A hostile file at ``path``: a zip archive from torch.save, or (``raw``) a bare pickle."""
    path.unlink(missing_ok=True)
    obj = {"module": _Payload(marker), "optimizer_state_dict": {}}
    if raw:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    else:
        torch.save(obj, path)


@pytest.fixture(autouse=True)
def _restore_dist_env():
    saved = {k: os.environ.get(k) for k in DIST_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _ds_env(mp: pytest.MonkeyPatch) -> None:
    mp.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
    mp.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")))


@pytest.fixture()
def ds_env(monkeypatch):
    """DeepSpeed's CPU accelerator and the checkout's extension cache, undone after the test."""
    _ds_env(monkeypatch)


def _ds_args(out: Path, synth_root: Path, make_tiny_args, name: str = "ds") -> list:
    return make_tiny_args(out, synth_root, name, 4, **{
        "teachers": "[{name: tiny-clip}]", "data.batch_size": 8, "data.epoch_samples": 32,
        "heads.stats_samples": 16, "optim.warmup_steps": 1, "log.checkpoint_interval": 2,
        "engine.name": "deepspeed", "engine.zero_stage": 2})


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory, synth_root, make_tiny_args):
    """One genuine tiny ZeRO-2 run, as if killed after its step-2 checkpoint (step 4 removed, latest -> 2)."""
    out = tmp_path_factory.mktemp("ds-runs")
    args = _ds_args(out, synth_root, make_tiny_args)
    with pytest.MonkeyPatch.context() as mp:
        _ds_env(mp)
        assert main(["train", *args]) == 0  # the engine removes the env it filled in when the run ends
    run = out / "ds"
    shutil.rmtree(run / "checkpoints" / "00000004")
    (run / "checkpoints" / "latest").write_text("00000002")
    assert sorted(p.name for p in (run / "checkpoints" / "00000002" / "ds").iterdir()) == [MODEL_STATES, OPTIM_STATES]
    return run


def _one_error_line(err: str, command: str) -> str:
    """The one error line of ``agglom <command>`` (DeepSpeed's own progress bar may precede it), no traceback."""
    lines = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith(f"agglom {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def _copy(run: Path, tmp_path: Path) -> Path:
    """The run as received at ``tmp_path/received``, its recorded out_dir pointing there (so that the same
    train command, run there, resumes it)."""
    dst = tmp_path / "received" / run.name
    shutil.copytree(run, dst)
    config = dst / "config.yaml"
    config.write_text(config.read_text().replace(f"out_dir: {run.parent}\n", f"out_dir: {dst.parent}\n"))
    return dst


# --------------------------------------------------------------------------- the allow-list itself
@pytest.mark.deepspeed
def test_the_allow_list_is_exactly_deepspeeds_checkpoint_types(tmp_path, ds_env):
    names = {f"{t.__module__}.{t.__qualname__}" for t in deepspeed_safe_globals()}
    assert names == {"deepspeed.runtime.zero.config.ZeroStageEnum", "deepspeed.runtime.fp16.loss_scaler.LossScaler",
                     "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
                     "deepspeed.utils.tensor_fragment.fragment_address"}
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    ok = tmp_path / "ok.pt"
    torch.save({"zero_stage": ZeroStageEnum(2), "loss_scaler": LossScaler(1.0), "w": torch.ones(2)}, ok)
    back = load_deepspeed_file(ok)
    assert back["zero_stage"] == 2 and back["loss_scaler"].cur_scale == 1.0 and torch.equal(back["w"], torch.ones(2))

    marker = tmp_path / "ran"
    bad = tmp_path / "bad.pt"
    real_load = torch.load
    for payload in (_Payload(marker), eval, __import__("subprocess").Popen):
        torch.save({"x": payload}, bad)
        with pytest.raises(UnsafeCheckpointError, match=f"refused to load {bad}.*Nothing in it was run"):
            load_deepspeed_file(bad)
        with deepspeed_loads_made_safe():  # what DeepSpeed's own reads become, whatever they ask for
            with pytest.raises(UnsafeCheckpointError, match="needs arbitrary code"):
                torch.load(bad, map_location="cpu", weights_only=False)
    assert torch.load is real_load and not marker.exists()


# --------------------------------------------------------------------------- a genuine DeepSpeed run
@pytest.mark.deepspeed
def test_a_genuine_deepspeed_run_consolidates_exports_and_resumes(ds_run, tmp_path, ds_env, make_tiny_args,
                                                                  synth_root, capsys):
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    from agglom.engine.deepspeed_engine import consolidate_fp32

    ckpt = ds_run / "checkpoints" / "00000002"
    safe = consolidate_fp32(ckpt)
    own = get_fp32_state_dict_from_zero_checkpoint(str(ckpt), tag="ds")  # DeepSpeed's own (unrestricted) reader
    assert safe.keys() == own.keys()
    assert all(torch.equal(safe[k], own[k].float() if own[k].is_floating_point() else own[k]) for k in own)

    assert main(["export", str(ds_run), f"out={tmp_path / 'export'}"]) == 0
    assert (tmp_path / "export" / "model.safetensors").is_file()

    run = _copy(ds_run, tmp_path)  # resumed from DeepSpeed's own step-2 checkpoint, through the safe reads
    capsys.readouterr()
    assert main(["train", *_ds_args(run.parent, synth_root, make_tiny_args)]) == 0
    assert f"resumed from {run / 'checkpoints' / '00000002'}" in capsys.readouterr().out
    assert (run / "checkpoints" / "latest").read_text() == "00000004"


# --------------------------------------------------------------------------- hostile DeepSpeed files
@pytest.mark.deepspeed
@pytest.mark.parametrize("target", [MODEL_STATES, OPTIM_STATES, "alone"])
def test_hostile_deepspeed_files_are_refused_and_nothing_runs(ds_run, tmp_path, ds_env, capsys, target,
                                                              make_tiny_args, synth_root):
    """``alone``: the tester's reproduction, a bare pickle as the only file of ds/ (the stage-0 branch)."""
    run = _copy(ds_run, tmp_path)
    ckpt = run / "checkpoints" / "00000002"
    marker = tmp_path / "PWNED"
    if target == "alone":
        shutil.rmtree(ckpt / "ds")
        (ckpt / "ds").mkdir()
        target = MODEL_STATES
        _plant(ckpt / "ds" / target, marker, raw=True)
    else:
        _plant(ckpt / "ds" / target, marker)
    hostile = ckpt / "ds" / target
    capsys.readouterr()

    assert main(["export", str(run), f"out={tmp_path / 'export'}"]) == 2
    err = _one_error_line(capsys.readouterr().err, "export")
    assert f"refused to load {hostile}" in err and "Nothing in it was run" in err and "weights_only=False" not in err
    assert not (tmp_path / "export").exists()

    assert main(["eval", str(run), f"out={tmp_path / 'eval'}", *FAST_EVAL]) == 2
    assert f"refused to load {hostile}" in _one_error_line(capsys.readouterr().err, "eval")

    assert main(["train", *_ds_args(run.parent, synth_root, make_tiny_args)]) == 1  # resume: the same command
    err = capsys.readouterr().err
    assert f"cannot resume from {ckpt}" in err and f"refused to load {hostile}" in err, err
    assert (run / "checkpoints" / "latest").read_text() == "00000002"
    assert not marker.exists()


# --------------------------------------------------------------------------- the torch engine's files
@pytest.fixture(scope="module")
def torch_run(tmp_path_factory, synth_root, make_tiny_args):
    out = tmp_path_factory.mktemp("torch-runs")
    args = make_tiny_args(out, synth_root, "tr", 2, **{"teachers": "[{name: tiny-clip}]", "data.batch_size": 8,
                                                       "data.epoch_samples": 32, "heads.stats_samples": 16,
                                                       "optim.warmup_steps": 1, "log.checkpoint_interval": 2})
    assert main(["train", *args]) == 0
    return out / "tr"


def test_torch_engine_export_and_eval_never_open_optim_or_rng_files(torch_run, tmp_path):
    """optim.pt and rng-*.pt are read only on resume (through the safe loader: tests/train/test_run_safety.py); export
    and eval read model.safetensors alone, so a payload in the others never runs."""
    run = _copy(torch_run, tmp_path)
    ckpt = run / "checkpoints" / "00000002"
    marker = tmp_path / "PWNED"
    _plant(ckpt / "optim.pt", marker)
    _plant(ckpt / "rng-0.pt", marker, raw=True)
    assert main(["export", str(run), f"out={tmp_path / 'export'}"]) == 0
    assert main(["eval", str(run), f"out={tmp_path / 'eval'}", *FAST_EVAL]) == 0
    assert not marker.exists()


def test_torch_engine_pickle_as_model_safetensors_is_one_line(torch_run, tmp_path, capsys):
    run = _copy(torch_run, tmp_path)
    weights = run / "checkpoints" / "00000002" / "model.safetensors"
    marker = tmp_path / "PWNED"
    _plant(weights, marker)
    capsys.readouterr()
    for cmd in (["export", str(run), f"out={tmp_path / 'export'}"], ["eval", str(run), *FAST_EVAL]):
        assert main(cmd) == 2
        assert f"{weights} is not a safetensors file" in _one_error_line(capsys.readouterr().err, cmd[0])
    assert not marker.exists()
