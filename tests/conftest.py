"""Shared test fixtures. Tests never reach the network: hub lookups fail fast offline."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The longest files (pytest --durations, 2 cores: ~45-60 s each), longest first, by basename (the files sit in
# per-package folders, tests/<package>/, and basenames stay unique across them). `make test` runs xdist's loadfile
# with --no-loadscope-reorder, so files are handed out in this collection order: the long ones start first and the
# two workers finish together (xdist's own order, by test count, started the 60 s demo file near the end). The
# two DeepSpeed files are not handed out together, so without make install's prebuilt comm op one worker builds it
# while the other runs the demo, rather than both waiting on the build.
LONGEST_FIRST = ("test_demo.py", "test_deepspeed.py", "test_train.py", "test_eval_cli.py", "test_finetune_engine.py",
                 "test_bench.py")


def _schedule_rank(item) -> tuple:
    name = item.path.name
    if name in LONGEST_FIRST:
        return (0, LONGEST_FIRST.index(name))
    slow = any(item.iter_markers("slow")) or any(item.iter_markers("deepspeed"))
    return (1 if slow else 2, 0)


def pytest_collection_modifyitems(session, config, items):
    """Files with end-to-end tests before the quick ones (a stable sort: order within a file is kept). Every
    worker collects the same items and sorts them the same way, as xdist requires."""
    ranks = {}
    for item in items:  # a file's rank is its most urgent item's
        ranks[item.path] = min(ranks.get(item.path, (3, 0)), _schedule_rank(item))
    items.sort(key=lambda it: ranks[it.path])


# --------------------------------------------------------------------------- data fixtures
@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small synthetic bias benchmark (``agglom data synth``: 240 samples, 32 px, 40 per shard, with twin)."""
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("synth") / "ds"
    write_synth(str(root), SynthParams(n=240, image_size=32, seed=0), twin=True, shard_size=40, val_frac=0.15,
                test_frac=0.15)
    return root


# --------------------------------------------------------------------------- training fixtures
TINY_STUDENT = "{patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"


def tiny_args(out_dir, data_root, name: str = "t", steps: int = 12, **over) -> list:
    """CLI args for a seconds-long `agglom train` on the tiny teacher cards (dotted keys; `over` wins)."""
    args = {
        "name": name, "out_dir": str(out_dir), "data.root": str(data_root), "data.image_size": 32,
        "data.batch_size": 16, "data.num_workers": 0, "data.epoch_samples": 128,
        "teachers": "[{name: tiny-clip}, {name: tiny-dinov2}, {name: tiny-sam}]",
        "student.model": "vit_small_patch16_224", "student.model_args": TINY_STUDENT,
        "heads.stats_samples": 32, "optim.steps": steps, "optim.warmup_steps": 2, "optim.lr": 2e-3,
        "log.interval": 2, "log.checkpoint_interval": 4, "log.progress": "off", "groups.by": "site",
    }
    args.update(over)
    return [f"{k}={v}" for k, v in args.items()]


@pytest.fixture(scope="session")
def make_tiny_args():
    """:func:`tiny_args` itself, for fixtures wider than one test (tests take fixtures, never import conftest)."""
    return tiny_args


@pytest.fixture(scope="session")
def tiny_student() -> str:
    """The tiny student's ``model_args`` (a YAML mapping)."""
    return TINY_STUDENT


@pytest.fixture()
def cli(capsys):
    """The real CLI as a function: ``cli(args) -> (exit code, stdout, stderr)``; a failure must be one line on stderr
    without a traceback (what every hostile-input test asserts first)."""
    from agglom.cli import main

    def run(args) -> tuple:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        if code:
            assert len(err.strip().splitlines()) == 1, err
        return code, out, err

    return run


@pytest.fixture()
def free_port() -> int:
    """A TCP port free at the moment of asking, for a launcher's rendezvous (never a fixed number two runs of
    the suite on one machine would share)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def tiny_train_args(tmp_path, synth_root):
    """`tiny_args` bound to this test's tmp_path and the synth fixture."""

    def make(name: str = "t", steps: int = 12, **over) -> list:
        return tiny_args(tmp_path / "runs", synth_root, name, steps, **over)

    return make


def _data_cfg(root, epoch_samples: int = 480, **over):
    """A default recipe reading the shards under ``root`` (32 px, batches of 16, no workers, grouped by site), with
    dotted-key overrides."""
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe

    cfg = OmegaConf.structured(Recipe)
    cfg.data.root, cfg.data.image_size, cfg.data.batch_size = str(root), 32, 16
    cfg.data.num_workers, cfg.data.epoch_samples = 0, epoch_samples
    cfg.groups.by = "site"
    for k, v in over.items():
        OmegaConf.update(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def data_cfg():
    """The data-side tests' recipe factory, ``data_cfg(root, epoch_samples=480, **{"data.key": value})``."""
    return _data_cfg
