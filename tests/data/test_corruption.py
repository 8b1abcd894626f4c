"""The corruption suite: every kind of bad input is skipped and counted (or refused up front, exit 2) by the training
stream and by the eval pass alike — no crash, no silent drop, no double count — and the counts reach the run's files
(run.json, metrics.jsonl, report.json, report.md).

Each kind is injected the same way into the train and test splits of a small clean dataset (24 train, 12 val, 12 test
PNGs): sample-level damage goes first in the split's shard, so the first training batch consumes it; shard-level
damage is an extra shard. The reader-level test checks exact counts fast; the end-to-end test (slow) runs the real
`agglom train` and `agglom eval` on each kind.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
from PIL import Image

from agglom.config.load import ConfigError, load_config
from agglom.config.schema import Recipe
from agglom.data.readers import eval_loader, train_loader
from agglom.data.writer import DatasetWriter


def _png(value: int, size: int = 12) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value % 256, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _meta(label: int = 1, site: str = "A") -> bytes:
    return json.dumps({"label": label, "attrs": {"site": site}}).encode()


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# a sample-level kind: the members put first in the shard (name suffix -> bytes) and how many samples they are
Members = List[Tuple[str, bytes]]
SAMPLE_KINDS: Dict[str, Tuple[Members, Dict[str, int], Dict[str, int]]] = {
    # kind: (members, eval skipped, noted)
    "garbage_image": ([("bad.png", b"\x89PNG\r\n\x1a\nnot an image"), ("bad.json", _meta())], {"bad_image": 1}, {}),
    "invalid_json": ([("bad.png", _png(3)), ("bad.json", b'{"label": 1, "attrs": ')], {"bad_json": 1}, {}),
    "missing_label": ([("bad.png", _png(3)), ("bad.json", b'{"attrs": {"site": "A"}}')], {"missing_field": 1}, {}),
    "no_image_member": ([("bad.json", _meta())], {"missing_field": 1}, {}),
    "npy_wrong_dtype": ([("bad.npy", _npy(np.ones((12, 12), np.complex64))), ("bad.json", _meta())],
                        {"bad_image": 1}, {}),
    "npy_wrong_shape": ([("bad.npy", _npy(np.ones((2, 2, 12, 12), np.float32))), ("bad.json", _meta())],
                        {"bad_image": 1}, {}),
    "npy_nan_inf": ([("bad.npy", _npy(np.where(np.eye(12) > 0, np.nan, np.inf).astype(np.float32))),
                     ("bad.json", _meta())], {"bad_image": 1}, {}),
    "image_0x0": ([("bad.npy", _npy(np.zeros((0, 0), np.float32))), ("bad.json", _meta())], {"bad_image": 1}, {}),
    "image_1x1": ([("bad.png", _png(3, size=1)), ("bad.json", _meta())], {"too_small": 1}, {}),
    "duplicate_member": ([("bad.png", _png(3)), ("bad.png", _png(4)), ("bad.json", _meta())],
                         {"duplicate_member": 1}, {}),
    "npy_out_of_range": ([("big.npy", _npy(np.full((12, 12), 3e38, np.float32))), ("big.json", _meta())], {},
                         {"clamped": 1}),
    "missing_group_attribute": ([("nosite.png", _png(3)), ("nosite.json", b'{"label": 0, "attrs": {}}')], {},
                                {"unknown_group": 1}),
}
SHARD_KINDS = ("truncated_tar", "empty_shard", "duplicate_key")
EXPECTED_SHARD: Dict[str, Tuple[Dict[str, int], Dict[str, int]]] = {
    # kind: (eval skipped, train skipped)
    "truncated_tar": ({"bad_tar": 1, "missing_samples": 2}, {"bad_tar": 1}),
    "empty_shard": ({"empty_shard": 1}, {"empty_shard": 1}),
    "duplicate_key": ({"duplicate_key": 1}, {"duplicate_key": 1}),
}
KINDS = sorted(SAMPLE_KINDS) + list(SHARD_KINDS) + ["missing_shard_files"]


def _base(root: Path) -> None:
    with DatasetWriter(root, shard_size=100) as w:
        for split, n in (("train", 24), ("val", 12), ("test", 12)):
            for i in range(n):
                w.write(f"{split}{i:03d}", _png(20 * i + 7), "png", i % 2, {"site": "AB"[(i // 2) % 2]}, split)
        w.close()


def _prepend(shard: Path, members: Members) -> None:
    with tarfile.open(shard) as t:
        old = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(shard, "w") as t:
        for name, data in members + old:
            _member(t, name, data)


def _list_more(root: Path, split: str, n: int) -> None:
    """Make the datasheet list ``n`` more samples for ``split`` (what a packer would have written)."""
    sheet = json.loads((root / "dataset.json").read_text())
    sheet["splits"][split]["samples"] += n
    (root / "dataset.json").write_text(json.dumps(sheet))


def _inject(root: Path, kind: str, split: str) -> None:
    shard = root / split / f"{split}-000000.tar"
    extra = root / split / f"{split}-000001.tar"
    if kind in SAMPLE_KINDS:
        _prepend(shard, SAMPLE_KINDS[kind][0])
        _list_more(root, split, 1)
    elif kind == "duplicate_key":  # the key of the shard's 3rd sample again, after 3 more samples
        with tarfile.open(shard) as t:
            members = [(m.name, t.extractfile(m).read()) for m in t.getmembers()]
        key = members[4][0].split(".")[0]
        dup = [(f"{key}.png", _png(99)), (f"{key}.json", _meta(0, "B"))]
        with tarfile.open(shard, "w") as t:
            for name, data in members[:12] + dup + members[12:]:
                _member(t, name, data)
        _list_more(root, split, 1)
    elif kind == "empty_shard":
        with tarfile.open(extra, "w"):
            pass
    elif kind == "truncated_tar":  # 4 samples, cut inside the data of the 3rd one's first member
        with tarfile.open(extra, "w") as t:
            for i in range(4):
                _member(t, f"cut{i}.png", _png(i + 50))
                _member(t, f"cut{i}.json", _meta(i % 2))
        with tarfile.open(extra) as t:
            cut = t.getmembers()[4].offset_data + 10
        extra.write_bytes(extra.read_bytes()[:cut])
        _list_more(root, split, 4)


def make_dataset(root: Path, kind: str) -> Path:
    _base(root)
    if kind != "missing_shard_files":
        for split in ("train", "test"):
            _inject(root, kind, split)
    return root


def expected(kind: str) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    """(eval skipped, train skipped, noted) of one split."""
    if kind in SAMPLE_KINDS:
        _, skipped, noted = SAMPLE_KINDS[kind]
        return skipped, skipped, noted
    if kind in EXPECTED_SHARD:
        ev, tr = EXPECTED_SHARD[kind]
        return ev, tr, {}
    return {"missing_shard": 1}, {"missing_shard": 1}, {}


def _pattern(root: Path) -> str:
    return str(root / "{split}" / "{split}-{000000..000001}.tar")


def _cfg(root: Path, kind: str, *over: str):
    extra = [f"data.shards={_pattern(root)}", "data.allow_missing_shards=true"] if kind == "missing_shard_files" else []
    return load_config(Recipe, [f"data.root={root}", "data.image_size=16", "data.batch_size=8", "data.num_workers=0",
                                "data.shuffle_buffer=1", "data.epoch_samples=16", *extra, *over])


# --------------------------------------------------------------------------- reader level (fast)
@pytest.mark.parametrize("kind", KINDS)
def test_each_corruption_is_counted_once_by_train_and_eval_readers(tmp_path, kind):
    root = make_dataset(tmp_path / "ds", kind)
    ev_skip, tr_skip, noted = expected(kind)
    cfg = _cfg(root, kind)

    loader = eval_loader(cfg, "test")
    keys = [k for b in loader for k in b["key"]]
    assert len(keys) == len(set(keys)), "a sample was used twice"
    assert dict(loader.stats) == ev_skip
    assert loader.stats.noted == noted
    listed = json.loads((root / "dataset.json").read_text())["splits"]["test"]["samples"]
    if kind != "missing_shard_files":  # every listed sample is read or counted, exactly once
        assert loader.samples + loader.stats.sample_skips + loader.stats.missing_samples == listed
    assert set(keys) >= {f"test{i:03d}" for i in range(12)}

    train = train_loader(cfg)
    used = [k for b in train for k in b["key"]]
    assert len(used) == 16
    assert dict(train.stats) == tr_skip
    assert set(train.stats.noted) == set(noted)
    assert not {"bad", "cut2", "cut3"} & set(used)


def test_missing_shard_files_are_refused_unless_allowed(tmp_path):
    root = make_dataset(tmp_path / "ds", "missing_shard_files")
    cfg = load_config(Recipe, [f"data.root={root}", f"data.shards={_pattern(root)}", "data.image_size=16"])
    for read in (lambda: eval_loader(cfg, "test"), lambda: train_loader(cfg)):
        with pytest.raises(ConfigError, match=r"1 of 2 shard files do not exist: .*-000001\.tar.*allow_missing_shards"):
            read()


def test_a_glob_pattern_reads_its_files(tmp_path):
    root = make_dataset(tmp_path / "ds", "empty_shard")
    cfg = load_config(Recipe, [f"data.root={root}", f"data.shards={root}/{{split}}/*.tar", "data.image_size=16"])
    loader = eval_loader(cfg, "test")
    assert sum(len(b["key"]) for b in loader) == 12 and dict(loader.stats) == {"empty_shard": 1}
    with pytest.raises(ConfigError, match="none of its 1 shard file"):
        eval_loader(load_config(Recipe, [f"data.root={root}", f"data.shards={root}/{{split}}/*.tgz"]), "test")


def test_a_key_repeated_across_shards_is_read_once_by_eval(tmp_path):
    root = make_dataset(tmp_path / "ds", "empty_shard")
    with tarfile.open(root / "test" / "test-000002.tar", "w") as t:
        _member(t, "test003.png", _png(1))
        _member(t, "test003.json", _meta())
    loader = eval_loader(_cfg(root, "x", "data.num_workers=2"), "test")
    keys = [k for b in loader for k in b["key"]]
    assert sorted(keys) == sorted(set(keys)) and len(keys) == 12
    assert loader.stats.get("duplicate_key") == 1


def test_skips_in_the_last_epoch_are_counted(tmp_path):
    """A run that stops mid-epoch still counts what its consumed batches skipped (carried with each batch)."""
    root = make_dataset(tmp_path / "ds", "garbage_image")
    cfg = _cfg(root, "garbage_image", "data.epoch_samples=1024")
    loader = train_loader(cfg)
    for _ in loader:
        break  # the first batch only
    assert dict(loader.stats) == {"bad_image": 1}


# --------------------------------------------------------------------------- the real CLI (slow)
def _run(*args: str, capsys) -> Tuple[int, str]:
    """The CLI in this process (the bad-config suite runs it as a subprocess): exit code and stderr."""
    from agglom.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def _train_args(root: Path, runs: Path, kind: str, *over: str) -> List[str]:
    extra = [f"data.shards={_pattern(root)}"] if kind == "missing_shard_files" else []
    return ["train", f"name={kind}", f"out_dir={runs}", f"data.root={root}", "data.image_size=16",
            "data.batch_size=8", "data.num_workers=0", "data.shuffle_buffer=1", "data.epoch_samples=16",
            "teachers=[{name: tiny-clip}]", "student.model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}",
            "heads.stats_samples=8", "optim.steps=3", "optim.warmup_steps=1", "log.interval=1", "log.progress=off",
            "log.checkpoint_interval=3", *extra, *over]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_corruption_end_to_end_counts_reach_the_run_files(tmp_path, kind, capsys):
    root = make_dataset(tmp_path / "ds", kind)
    runs = tmp_path / "runs"
    ev_skip, tr_skip, noted = expected(kind)
    if kind == "missing_shard_files":  # refused up front, by name, with nothing written ...
        code, err = _run(*_train_args(root, runs, kind), capsys=capsys)
        assert code == 2 and "train-000001.tar" in err and "allow_missing_shards" in err, err
        assert not runs.exists()
        over = ["data.allow_missing_shards=true"]  # ... or, when allowed, counted
    else:
        over = []
    code, err = _run(*_train_args(root, runs, kind, *over), capsys=capsys)
    assert code == 0, err
    run = runs / kind
    summary = json.loads((run / "run.json").read_text())
    assert summary["skipped"] == tr_skip and set(summary["noted"]) == set(noted)
    end = [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e.get("event") == "end"]
    assert end and end[-1]["skipped"] == tr_skip

    code, err = _run("eval", f"run={run}", "eval.bootstrap=0", "eval.label_fractions=[]", "eval.fidelity=false",
                     "eval.seeds=1", "num_workers=0", capsys=capsys)
    assert code == 0, err
    report = json.loads((run / "eval" / "report.json").read_text())
    for split in ("train", "test"):
        assert report["data"][split]["skipped"] == ev_skip, split
        assert report["data"][split]["noted"] == noted, split
    md = (run / "eval" / "report.md").read_text()
    assert "## Data read" in md
    assert ("Not every sample was used" in md) == bool(ev_skip)
