"""`agglom finetune` on the shared loop: exact resume after kill -9, and the DeepSpeed engine (ZeRO-2, CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agglom.train.logger import MetricLogger

ROOT = Path(__file__).resolve().parents[2]
TINY = "model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}"


def _cmd(root: Path, out: Path, steps: int, *extra: str) -> list:
    return [sys.executable, "-m", "agglom", "finetune", f"data.root={root}", "model=vit_small_patch16_224", TINY,
            f"optim.steps={steps}", "optim.warmup_steps=2", "data.batch_size=16", "data.epoch_samples=64",
            "data.image_size=32", "objective.group=groupdro", "groups.by=site", "val_interval=4", "log_interval=2",
            f"out={out}", f"name={out.name}", "progress=off", *extra]


def _env(**extra: str) -> dict:
    # the same thread count in every process: CPU kernels are deterministic for a fixed number of threads
    return {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT), **extra}


def _records(run: Path) -> list:
    """metrics.jsonl without timings and start/resume events (which differ between a resumed and a straight run)."""
    timing = ("samples_per_s", "data_s")
    return [{k: v for k, v in r.items() if k not in timing} for r in MetricLogger.read(run / "metrics.jsonl")
            if r.get("event") in (None, "validation")]


def _assert_same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(str(a)), load_file(str(b))
    assert x.keys() == y.keys() and x
    for k in x:
        assert torch.equal(x[k], y[k]), f"{a.name}:{k} differs"


@pytest.mark.slow
def test_finetune_kill_9_then_rerun_matches_uninterrupted(synth_root, tmp_path):
    """Bitwise on CPU: model, GroupDRO weights, metrics and validation records, and the exported encoder."""
    extra = ("checkpoint_interval=3", "data.num_workers=2", "optim.accum_steps=2")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = subprocess.run(_cmd(synth_root, straight, 18, *extra), env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    latest = Path(f"{killed}.run") / "checkpoints" / "latest"
    proc = subprocess.Popen(_cmd(synth_root, killed, 18, *extra), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and not (latest.is_file() and int(latest.read_text().strip() or 0) >= 6):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 6 <= int(latest.read_text()) < 18, "not killed between the step-6 checkpoint and the end"
    assert not (killed / "model.safetensors").exists()  # nothing exported by the killed run
    out = subprocess.run(_cmd(synth_root, killed, 18, *extra), env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from" in out.stdout
    for f in ("model", "objective"):
        _assert_same_tensors(Path(f"{straight}.run/checkpoints/00000018/{f}.safetensors"),
                             Path(f"{killed}.run/checkpoints/00000018/{f}.safetensors"))
    _assert_same_tensors(straight / "model.safetensors", killed / "model.safetensors")
    assert _records(Path(f"{straight}.run")) == _records(Path(f"{killed}.run"))
    a, b = (json.loads((d / "finetune.json").read_text()) for d in (straight, killed))
    assert a["final"] == b["final"] and a["validation"] == b["validation"] and a["history"] == b["history"]
    assert [v["step"] for v in a["validation"]] == [4, 8, 12, 16, 18]
    assert a["groupdro_q"] == b["groupdro_q"]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_finetune_under_deepspeed_matches_torch_resumes_and_exports(synth_root, tmp_path):
    """ZeRO-2 on DeepSpeed's CPU accelerator: the same weights as the torch engine (fp32, one process), a resume
    from DeepSpeed's own checkpoint, and an export (consolidated to fp32) that loads as a teacher."""
    import teachers

    ds, ref = tmp_path / "ds", tmp_path / "ref"
    extra = ("checkpoint_interval=2", "keep=2", "data.num_workers=0")
    env = _env(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                                                         str(ROOT / ".torch_extensions")))
    cmd = _cmd(synth_root, ds, 6, *extra, "engine.name=deepspeed", "engine.zero_stage=2")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = Path(f"{ds}.run")
    assert (run / "checkpoints" / "00000006" / "ds").is_dir()  # DeepSpeed's own checkpoint format
    # as if killed before the step-6 checkpoint: the same command resumes from DeepSpeed's step-4 checkpoint
    first = load_file(str(ds / "model.safetensors"))
    import shutil

    shutil.rmtree(run / "checkpoints" / "00000006")
    (run / "checkpoints" / "latest").write_text("00000004")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resumed from" in r.stdout and "00000004" in r.stdout
    resumed = load_file(str(ds / "model.safetensors"))
    for k in first:
        torch.testing.assert_close(resumed[k], first[k], atol=1e-6, rtol=0, msg=k)
    r = subprocess.run(_cmd(synth_root, ref, 6, *extra), env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    torch_weights = load_file(str(ref / "model.safetensors"))
    for k in torch_weights:
        assert resumed[k].dtype == torch.float32
        torch.testing.assert_close(resumed[k], torch_weights[k], atol=1e-4, rtol=0, msg=k)
    card = teachers.load_card(str(ds))
    assert card.family == "agglom"
    rec = json.loads((ds / "finetune.json").read_text())
    assert rec["args"]["engine"]["name"] == "deepspeed" and rec["steps"] == 6 and rec["final"]["groups"]
