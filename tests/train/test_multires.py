"""Multi-resolution training (data.resolutions): a schedule that is a pure function of (seed, step), validated at
load, reproduced after an interrupted run resumes, and a short CPU run at two sizes end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agglom.cli import main
from agglom.train.logger import MetricLogger
from agglom.train.multires import batch_at, schedule, size_at

DYNAMIC = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2, dynamic_img_size: true}"


def test_schedule_is_a_pure_function_of_seed_and_step():
    sizes = [16, 24, 32]
    a = [size_at(0, i, sizes) for i in range(300)]
    assert a == [size_at(0, i, [32, 16, 24]) for i in range(300)]  # the order sizes are written in does not matter
    assert set(a) == set(sizes) and all(a.count(s) > 60 for s in sizes)  # every size, roughly evenly
    assert a != [size_at(1, i, sizes) for i in range(300)]  # another seed, another schedule
    assert size_at(0, 123, sizes) == a[123]  # any step on its own: what a resumed run or another rank computes
    assert [batch_at(16, s, sizes) for s in sizes] == [16, 7, 4]  # tokens per step ~ 16 * 2^2
    assert batch_at(16, 32, sizes, scale=False) == 16 and batch_at(2, 32, [8, 32]) == 1
    assert schedule(0, 5, sizes, 16) == [(s, batch_at(16, s, sizes)) for s in a[:5]]


@pytest.mark.parametrize("value,over,message", [
    ("[20,32]", {}, "not a multiple of the student's patch size 8"),
    ("[16,48]", {}, "exceeds data.image_size=32"),
    ("[16,32]", {"student.model_args": "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"}, "dynamic_img_size"),
    ("[0,32]", {}, "must be all in [1, 8192]"),
])
def test_bad_resolutions_exit_2_naming_the_key(tiny_train_args, capsys, value, over, message):
    args = tiny_train_args("bad", 2, **{"student.model_args": DYNAMIC, "data.resolutions": value, **over})
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "data.resolutions" in err and message in err, err


def _schedule_of(run: Path) -> dict:
    return {r["step"]: r["input_size"] for r in MetricLogger.read(run / "metrics.jsonl") if "input_size" in r}


def test_two_size_training_runs_and_a_resumed_run_reproduces_the_schedule(tiny_train_args, monkeypatch):
    from agglom.engine.torch_engine import TorchEngine

    over = {"student.model_args": DYNAMIC, "data.resolutions": "[16,32]", "log.interval": 1,
            "log.checkpoint_interval": 2, "data.epoch_samples": 64, "teachers": "[{name: tiny-clip}, {name: tiny-sam}]"}
    straight = tiny_train_args("straight", 8, **over)
    assert main(["train", *straight]) == 0
    run = Path(dict(a.split("=", 1) for a in straight)["out_dir"]) / "straight"
    expected = schedule(0, 8, [16, 32], 16)
    assert _schedule_of(run) == {i + 1: float(s) for i, (s, _) in enumerate(expected)}
    assert {s for s, _ in expected} == {16, 32}
    summary = json.loads((run / "run.json").read_text())
    assert summary["samples"] == sum(n for _, n in expected)  # 16 samples at 16 px, 4 at 32 px
    losses = {r["step"]: r["loss"] for r in MetricLogger.read(run / "metrics.jsonl") if "loss" in r}

    real_save = TorchEngine.save

    def dying_save(self, directory):  # killed while writing the step-6 checkpoint: the rerun resumes from 4
        if Path(directory).name == ".tmp-00000006":
            raise KeyboardInterrupt("killed")
        return real_save(self, directory)

    monkeypatch.setattr(TorchEngine, "save", dying_save)
    killed = tiny_train_args("killed", 8, **over)
    assert main(["train", *killed]) == 130  # the CLI reports the interrupt in one line
    monkeypatch.undo()
    assert main(["train", *killed]) == 0
    resumed = run.parent / "killed"
    assert _schedule_of(resumed) == _schedule_of(run)
    assert json.loads((resumed / "run.json").read_text())["samples"] == summary["samples"]
    again = {r["step"]: r["loss"] for r in MetricLogger.read(resumed / "metrics.jsonl") if "loss" in r}
    assert again == pytest.approx(losses, rel=1e-4)


@pytest.mark.slow
def test_two_ddp_ranks_train_at_the_same_size_every_step(tiny_train_args, free_port):
    """Each rank records the size its student was fed (log.all_ranks: rank 1 writes metrics-rank1.jsonl); DDP
    itself would not notice ranks at different sizes (the parameters' shapes do not change), so this is the check."""
    steps = 6
    over = {"student.model_args": DYNAMIC, "data.resolutions": "[16,24,32]", "log.interval": 1, "log.all_ranks": "true",
            "data.epoch_samples": 64, "teachers": "[{name: tiny-clip}]", "heads.stats_samples": 16}
    args = tiny_train_args("ddp-sizes", steps, **over)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port),
           "-m", "agglom", "train", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    run = Path(dict(a.split("=", 1) for a in args)["out_dir"]) / "ddp-sizes"
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    rank0, rank1 = _schedule_of(run), {r["step"]: r["input_size"] for r in
                                       MetricLogger.read(run / "metrics-rank1.jsonl") if "input_size" in r}
    expected = {i + 1: float(s) for i, (s, _) in enumerate(schedule(0, steps, [16, 24, 32], 16))}
    assert len(set(expected.values())) > 1  # the schedule changes size within the run
    assert rank0 == expected and rank1 == expected
