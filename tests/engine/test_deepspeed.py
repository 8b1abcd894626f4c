"""The DeepSpeed strategy (ZeRO 0-3 on DeepSpeed's CPU accelerator), its config and its launcher.

Run with DS_ACCELERATOR=cpu and TORCH_EXTENSIONS_DIR pointing inside the checkout (as the Makefile sets it): the
first DeepSpeed start compiles a comm op (~35 s) and caches it there; `make install` builds it once beforehand.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from agglom.config.load import ConfigError
from agglom.config.schema import Recipe
from agglom.engine.ds_config import build_ds_config
from agglom.engine.launch import build_command, format_command, parse_args
from agglom.engine.launch import main as launch_main

pytestmark = pytest.mark.deepspeed

ROOT = Path(__file__).resolve().parents[2]  # the checkout (this file is tests/engine/test_deepspeed.py)
WORKER = Path(__file__).resolve().parent / "ds_worker.py"  # beside this file


@pytest.fixture(autouse=True)
def _cpu_accelerator(monkeypatch):
    """DeepSpeed's CPU accelerator and the checkout's extension cache for each test here, undone after it (set at
    collection time they would leak into every later test)."""
    monkeypatch.setenv("DS_ACCELERATOR", os.environ.get("DS_ACCELERATOR", "cpu"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")))


def make_cfg(**over) -> object:
    cfg = OmegaConf.structured(Recipe)
    cfg.engine.name = "deepspeed"
    cfg.data.batch_size = 4
    cfg.optim.lr = 0.01
    for key, value in over.items():
        OmegaConf.update(cfg, key, value)
    return cfg


class Net(nn.Module):
    """Two layers and a running-statistics buffer (like the feature normalisers)."""

    def __init__(self, track: bool = True) -> None:
        super().__init__()
        self.a = nn.Linear(6, 16)
        self.b = nn.Linear(16, 1)
        self.register_buffer("mu", torch.zeros(6))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.track = track

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.track:
            with torch.no_grad():
                self.mu.lerp_(x.mean(0), 0.1)
                self.fitted.fill_(True)
        return self.b(torch.tanh(self.a(x - self.mu)))


def micro_batches(n: int, seed: int = 1, bs: int = 4):
    g = torch.Generator().manual_seed(seed)
    w = torch.linspace(-1, 1, 6)
    out = []
    for _ in range(n):
        x = torch.randn(bs, 6, generator=g)
        out.append((x, (x * w).sum(1, keepdim=True)))
    return out


def new_engine(cfg, seed: int = 0, track: bool = True):
    from agglom.engine.deepspeed_engine import DeepSpeedEngine

    torch.manual_seed(seed)
    model = Net(track)
    engine = DeepSpeedEngine(cfg)
    wrapped = engine.setup(model, [{"params": list(model.parameters())}], lambda s: 1.0 / (1 + 0.1 * s))
    return engine, wrapped


def train(engine, wrapped, data, first_step: int, steps: int, accum: int):
    it = iter(data)
    losses, norms = [], []
    for s in range(first_step, first_step + steps):
        for _ in range(accum):
            x, y = next(it)
            loss = ((wrapped(x) - y) ** 2).mean()
            engine.backward(loss)
            losses.append(float(loss.detach()))
        norms.append(engine.step(s))
    return losses, norms


def state(module: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        if a[k].is_floating_point():
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
        else:
            assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------------------------- config
def test_ds_config_mapping():
    cfg = make_cfg(**{"optim.grad_clip": 0.5, "optim.accum_steps": 3, "engine.zero_stage": 3,
                      "engine.offload_optimizer": True, "engine.offload_params": True, "data.batch_size": 8})
    c = build_ds_config(cfg, "cpu")
    assert c["train_micro_batch_size_per_gpu"] == 8
    assert c["gradient_accumulation_steps"] == 3
    assert c["gradient_clipping"] == 0.5
    assert c["zero_optimization"]["stage"] == 3
    assert c["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert c["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert c["bf16"]["enabled"] is False and c["wall_clock_breakdown"] is False
    assert c["steps_per_print"] >= 10**6 and "optimizer" not in c and "train_batch_size" not in c
    plain = build_ds_config(make_cfg(**{"optim.grad_clip": 0.0, "engine.zero_stage": 0}), "cpu")
    assert plain["gradient_clipping"] == 0.0 and plain["zero_optimization"] == {"stage": 0}
    for prec, dev, want in [("auto", "cuda", True), ("auto", "cpu", False), ("bf16", "cpu", True),
                            ("fp32", "cuda", False)]:
        assert build_ds_config(make_cfg(**{"engine.precision": prec}), dev)["bf16"]["enabled"] is want


@pytest.mark.parametrize("over,needle", [({"engine.zero_stage": 4}, "engine.zero_stage"),
                                         ({"engine.zero_stage": -1}, "0, 1, 2, 3"),
                                         ({"engine.precision": "fp16"}, "engine.precision"),
                                         ({"engine.zero_stage": 2, "engine.offload_params": True}, "offload_params"),
                                         ({"engine.zero_stage": 0, "engine.offload_optimizer": True},
                                          "offload_optimizer"),
                                         ({"engine.zero_stage": 3, "optim.ema": 0.99}, "optim.ema=0.99")])
def test_ds_config_errors(over, needle):
    with pytest.raises(ConfigError, match=needle):
        build_ds_config(make_cfg(**over), "cpu")


def test_ds_config_file_override(tmp_path):
    f = tmp_path / "ds.json"
    f.write_text(json.dumps({"zero_optimization": {"overlap_comm": True}, "gradient_clipping": 2.0,
                             "bf16": {"enabled": True}}))
    c = build_ds_config(make_cfg(**{"engine.ds_config": str(f), "engine.zero_stage": 1}), "cpu")
    assert c["zero_optimization"] == {"stage": 1, "overlap_comm": True}  # merged, stage kept
    assert c["gradient_clipping"] == 2.0 and c["bf16"]["enabled"] is True
    with pytest.raises(ConfigError, match="not found"):
        build_ds_config(make_cfg(**{"engine.ds_config": str(tmp_path / "nope.json")}), "cpu")
    f.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ConfigError, match="optimizer"):
        build_ds_config(make_cfg(**{"engine.ds_config": str(f)}), "cpu")
    f.write_text(json.dumps({"zero_optimization": {"stage": 3}}))  # stage 3 from the file: the EMA guard sees it
    with pytest.raises(ConfigError, match="ZeRO stage 3"):
        build_ds_config(make_cfg(**{"engine.ds_config": str(f), "optim.ema": 0.9}), "cpu")
    assert build_ds_config(make_cfg(**{"engine.ds_config": str(f)}), "cpu")["zero_optimization"]["stage"] == 3


# --------------------------------------------------------------------------------------------- launcher
def test_launcher_command(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    opts, rest = parse_args([f"recipe={recipe}", "num_gpus=2", "hostfile=", "dry_run=true", "--",
                             "optim.steps=3", "name=y"])
    cmd, env = build_command(opts, rest, gpu=False)
    assert Path(cmd[0]).name == "deepspeed"
    assert cmd[1:] == ["--num_gpus", "2", "--module", "agglom.cli", "train", f"recipe={recipe}",
                       "engine.name=deepspeed", "optim.steps=3", "name=y"]
    assert env == {"DS_ACCELERATOR": "cpu"}
    assert format_command(cmd, env).startswith("DS_ACCELERATOR=cpu ")
    hosts = tmp_path / "hosts"
    hosts.write_text("worker-0 slots=8\nworker-1 slots=8\n")
    cmd, env = build_command({"recipe": str(recipe), "hostfile": str(hosts), "num_nodes": "2"}, [], gpu=True)
    assert cmd[1:5] == ["--hostfile", str(hosts), "--num_nodes", "2"] and env == {}

    # the Makefile's spelling, through main(): prints the command, exits 0
    assert launch_main([f"recipe={recipe}", "num_gpus=2", "hostfile=", "dry_run=true", "--"]) == 0
    out = capsys.readouterr().out.strip()
    assert "--module agglom.cli train" in out and "engine.name=deepspeed" in out and "--hostfile" not in out
    assert launch_main([f"recipe={recipe}", "bogus=1", "dry_run=true"]) == 2
    assert launch_main([f"recipe={recipe}", "dry_run=true", "--", "engine.name=torch"]) == 2
    assert launch_main(["recipe=missing.yaml", "dry_run=true"]) == 2
    assert launch_main([f"recipe={recipe}", "num_gpus=two", "dry_run=true"]) == 2


def test_launcher_module_entry(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\n")
    r = subprocess.run([sys.executable, "-m", "agglom.engine.launch", f"recipe={recipe}", "num_gpus=2", "hostfile=",
                        "dry_run=true", "--", "optim.steps=2"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "--num_gpus 2 --module agglom.cli train" in r.stdout and r.stdout.strip().endswith("optim.steps=2")


# ----------------------------------------------------------------------------------- one process, ZeRO
@pytest.mark.parametrize("stage", [0, 2, 3])
def test_zero_stages_train(stage):
    engine, wrapped = new_engine(make_cfg(**{"engine.zero_stage": stage}))
    assert engine.name == "deepspeed" and engine.ds_config["zero_optimization"]["stage"] == stage
    data = micro_batches(8) * 4
    losses, norms = train(engine, wrapped, data, 0, 32, 1)
    assert sum(losses[-8:]) < 0.5 * sum(losses[:8])
    assert all(n == n and n > 0 for n in norms)  # a real grad norm, not NaN
    assert engine.current_lr() == pytest.approx(0.01 / (1 + 0.1 * 31))
    assert isinstance(engine.unwrap(), Net) and bool(engine.unwrap().fitted)
    engine.close()


def test_accumulation_matches_torch_engine():
    """accum_steps=2 through DeepSpeed (ZeRO-2, clipping active) equals the torch strategy's maths."""
    from agglom.engine.torch_engine import TorchEngine

    over = {"engine.zero_stage": 2, "optim.accum_steps": 2, "optim.grad_clip": 0.5}
    data = micro_batches(12)
    engine, wrapped = new_engine(make_cfg(**over), track=False)
    ds_losses, ds_norms = train(engine, wrapped, data, 0, 6, 2)
    ds_state = state(engine.unwrap())
    assert engine.engine.global_steps == 6
    engine.close()

    torch.manual_seed(0)
    model = Net(track=False)
    ref = TorchEngine(make_cfg(**{**over, "engine.name": "torch"}))
    ref_wrapped = ref.setup(model, [{"params": list(model.parameters())}], lambda s: 1.0 / (1 + 0.1 * s))
    ref_losses, ref_norms = train(ref, ref_wrapped, data, 0, 6, 2)
    assert ds_losses == pytest.approx(ref_losses, abs=1e-5)
    assert ds_norms == pytest.approx(ref_norms, rel=1e-4)
    assert_same(ds_state, state(model), atol=1e-5)


def test_zero_grad_mid_window_and_step_contract():
    engine, wrapped = new_engine(make_cfg(**{"engine.zero_stage": 0, "optim.accum_steps": 2}))
    (x, y), = micro_batches(1)
    engine.backward(((wrapped(x) - y) ** 2).mean())
    with pytest.raises(RuntimeError, match="gradient_accumulation_steps=2"):
        engine.step(0)
    engine.zero_grad()  # what the loop does after a non-finite loss: the window restarts
    assert all(p.grad is None for p in engine.unwrap().parameters())
    losses, norms = train(engine, wrapped, micro_batches(4), 0, 2, 2)
    assert len(losses) == 4 and all(n == n for n in norms)
    engine.close()


@pytest.mark.parametrize("stage", [0, 2])
def test_save_load_resume_exact(tmp_path, stage):
    cfg = make_cfg(**{"engine.zero_stage": stage, "optim.accum_steps": 2})
    data = micro_batches(20)
    engine, wrapped = new_engine(cfg)
    train(engine, wrapped, data[:10], 0, 5, 2)
    engine.save(tmp_path / "ck")
    saved = state(engine.unwrap())
    train(engine, wrapped, data[10:], 5, 5, 2)
    uninterrupted = state(engine.unwrap())
    lr = engine.current_lr()

    engine2, wrapped2 = new_engine(cfg, seed=7)  # a different init: all state must come from the checkpoint
    engine2.load(tmp_path / "ck")
    assert_same(state(engine2.unwrap()), saved, atol=0)  # parameters and buffers
    assert engine2.client_state["zero_stage"] == stage and engine2.engine.global_steps == 5
    train(engine2, wrapped2, data[10:], 5, 5, 2)
    assert_same(state(engine2.unwrap()), uninterrupted, atol=1e-6)  # optimiser moments + step count restored
    assert engine2.current_lr() == pytest.approx(lr)
    engine2.close()
    engine.close()


def test_consolidate_fp32_zero2(tmp_path):
    from agglom.engine.deepspeed_engine import consolidate_fp32

    engine, wrapped = new_engine(make_cfg(**{"engine.zero_stage": 2}))
    train(engine, wrapped, micro_batches(3), 0, 3, 1)
    engine.save(tmp_path / "ck")
    live = state(engine.unwrap())
    sd = engine.consolidate_fp32(tmp_path / "ck")
    assert_same({k: sd[k] for k in live}, live, atol=0)
    assert all(v.dtype == torch.float32 for k, v in sd.items() if k != "fitted")
    model = Net()
    model.load_state_dict(consolidate_fp32(tmp_path / "ck"), strict=True)
    engine.close()


def test_bf16_zero2_runs():
    engine, wrapped = new_engine(make_cfg(**{"engine.zero_stage": 2, "engine.precision": "bf16"}), track=False)
    assert engine.ds_config["bf16"]["enabled"]
    assert engine.unwrap().a.weight.dtype == torch.bfloat16 and engine.unwrap().mu.dtype == torch.float32
    with engine.autocast():  # the loop runs the task's forward under engine.autocast()
        losses, norms = train(engine, wrapped, micro_batches(1) * 4, 0, 4, 1)
    assert all(torch.isfinite(torch.tensor(losses + norms))) and losses[-1] < losses[0]
    engine.close()


# ---------------------------------------------------------------------------------- the real launcher
def test_deepspeed_launcher_two_ranks(tmp_path, free_port):
    """`deepspeed --num_gpus 2` on CPU: both ranks train, save, load, and end with identical weights."""
    exe = Path(sys.executable).parent / "deepspeed"
    if not exe.is_file():
        pytest.skip("no deepspeed launcher in this environment")
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    port = str(free_port)
    for attempt in range(2):
        r = subprocess.run([str(exe), "--num_gpus", "2", "--master_port", port, str(WORKER),
                            str(tmp_path), "2"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        # one rerun, only for the intermittent C++ abort a rank can hit while its comm threads are torn down on a
        # loaded 2-core machine (seen once in ~10 full suites; the rerun must then pass cleanly)
        if r.returncode == 0 or "terminate called without an active exception" not in r.stderr or attempt:
            break
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(2)]
    assert [d["rank"] for d in ranks] == [0, 1] and all(d["world_size"] == 2 for d in ranks)
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank saw its own data
    for key in ranks[0]["uninterrupted"]:
        a, b = ranks[0]["uninterrupted"][key], ranks[1]["uninterrupted"][key]
        assert a == b, key  # identical weights and buffers on both ranks
        for d in ranks:
            assert torch.allclose(torch.tensor(d["resumed"][key]), torch.tensor(a), atol=1e-6), key
    assert sorted(p.name for p in (tmp_path / "ckpt" / "ds").iterdir()) == [
        "mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt"]


def test_agglom_train_with_deepspeed_trains_resumes_and_exports(tiny_train_args, tmp_path):
    """The full pipeline under `engine.name=deepspeed` (ZeRO-2, CPU): train, resume from DeepSpeed's own
    checkpoint, export (consolidated to fp32) and load with timm."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    args = tiny_train_args("ds", steps=6, **{"engine.name": "deepspeed", "engine.zero_stage": 2,
                                             "log.checkpoint_interval": 2})
    cmd = [sys.executable, "-m", "agglom", "train", *args]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    run = Path(dict(a.split("=", 1) for a in args)["out_dir"]) / "ds"
    # as if killed before the step-6 checkpoint: the same command resumes from DeepSpeed's step-4 checkpoint
    shutil.rmtree(run / "checkpoints" / "00000006")
    (run / "checkpoints" / "latest").write_text("00000004")
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "resumed from" in r.stdout and "00000004" in r.stdout
    assert json.loads((run / "run.json").read_text())["step"] == 6
    out = tmp_path / "export"
    r = subprocess.run([sys.executable, "-m", "agglom", "export", str(run), f"out={out}"], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    import timm

    m = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert m.forward_features(torch.randn(1, 3, 32, 32)).shape[0] == 1
