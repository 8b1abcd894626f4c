"""More hostile input to the dataset writers and the JSON files agglom reads: symbolic links in an output folder
(``force=true`` must never delete or write outside it), options out of range, JSON nested 100000 deep or too large,
and messages that name a file on one line. As in tests/hostile/test_hostile_data.py: exit 0 (the problem counted), or a
one-line message naming the file (exit 2: the user's to fix), never a traceback, and nothing outside the target
folder touched."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agglom.data.manifest import MANIFEST


def _source(tmp: Path) -> None:
    """Eight 16-px images in two class folders, and a CSV naming them (path,label,site)."""
    rows = ["path,label,site"]
    for i in range(8):
        cls = ("healthy", "sick")[i % 2]
        (tmp / "src" / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((16, 16), 30 * i, np.uint8)).save(tmp / "src" / cls / f"im{i}.png")
        rows.append(f"src/{cls}/im{i}.png,{i % 2},{'AB'[i // 4]}")
    (tmp / "meta.csv").write_text("\n".join(rows) + "\n")


def _args(kind: str, tmp: Path, out: Path) -> list:
    if kind == "synth":
        return ["data", "synth", f"out={out}", "n=16", "image_size=16", "shard_size=3"]
    _source(tmp)
    return ["data", "pack", f"out={out}", f"csv={tmp / 'meta.csv'}", "shard_size=2"]


def _victim(tmp: Path, name: str = "victim") -> Path:
    """A folder outside every target, holding what a link would lead agglom to."""
    v = tmp / name
    v.mkdir()
    (v / "authorized_keys").write_text("secret")
    (v / "keep.txt").write_text("v")
    return v


def _tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- B2: links in the output folder
@pytest.mark.parametrize("kind,split", [("synth", "val"), ("pack", "test")])
def test_force_never_deletes_or_writes_through_a_linked_split(kind, split, tmp_path, cli):
    """A split folder that links elsewhere, with a forged manifest entry naming a file behind it: refused before
    anything is removed (before: the linked file was deleted and a shard written into the linked folder)."""
    out = tmp_path / "ds"
    args = _args(kind, tmp_path, out)
    assert cli(args)[0] == 0
    victim = _victim(tmp_path)
    before = _tree(victim)
    shutil.rmtree(out / split)
    (out / split).symlink_to(victim)
    m = json.loads((out / MANIFEST).read_text())
    m["files"] += [f"{split}/authorized_keys"]
    (out / MANIFEST).write_text(json.dumps(m))
    kept = _tree(out)
    code, _, err = cli(args + ["force=true"])
    assert code == 2 and f"{out / split} is a symbolic link (to {victim})" in err and "nothing was removed" in err
    assert _tree(victim) == before and _tree(out) == kept


@pytest.mark.parametrize("what", ["train_folder", "unlisted_train", "shard_file", "manifest_tmp"])
def test_a_link_among_the_outputs_is_refused(what, tmp_path, cli):
    """A plain link, no forged entry: a linked ``train/`` holding a foreign shard (listed in the manifest, or left
    there after an earlier write went through it), a listed shard that is a link, a ``agglom-manifest.json.tmp``
    that links to a file (before: the foreign shard was overwritten)."""
    out = tmp_path / "ds"
    args = _args("synth", tmp_path, out)
    assert cli(args)[0] == 0
    victim = _victim(tmp_path)
    (victim / "train-000000.tar").write_bytes(b"not yours")
    if what in ("train_folder", "unlisted_train"):
        shutil.rmtree(out / "train")
        link = out / "train"
        link.symlink_to(victim)
        if what == "unlisted_train":  # refused before the previous dataset is cleared, not half-way through
            m = json.loads((out / MANIFEST).read_text())
            m["files"] = [f for f in m["files"] if not f.startswith("train")]
            m["folders"] = [f for f in m["folders"] if f != "train"]
            (out / MANIFEST).write_text(json.dumps(m))
    elif what == "shard_file":
        link = out / "val" / "val-000000.tar"
        link.unlink()
        link.symlink_to(victim / "train-000000.tar")
    else:
        link = out / (MANIFEST + ".tmp")
        link.symlink_to(victim / "keep.txt")
    before, kept = _tree(victim), _tree(out)
    code, _, err = cli(args + ["force=true"])
    assert code == 2 and f"{link} is a symbolic link" in err and "nothing was removed" in err
    assert _tree(victim) == before and _tree(out) == kept


def test_a_link_in_a_new_output_folder_is_not_written_through(tmp_path, cli):
    """No dataset yet, only a ``train`` link: the write refuses it and leaves the folder as it was."""
    out = tmp_path / "ds"
    out.mkdir()
    victim = _victim(tmp_path)
    (out / "train").symlink_to(victim)
    code, _, err = cli(_args("synth", tmp_path, out))
    assert code == 2 and f"{out / 'train'} is a symbolic link (to {victim})" in err
    assert sorted(p.name for p in out.iterdir()) == ["train"] and sorted(p.name for p in victim.iterdir()) == [
        "authorized_keys", "keep.txt"]


def test_an_output_root_that_is_a_link_is_followed_and_stays_inside(tmp_path, cli):
    """``out=`` naming a link is the user's choice: written in its target, and rewritten there with force; a link
    that points at nothing is refused."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "notes.txt").write_text("mine")
    link = tmp_path / "link"
    link.symlink_to(real)
    args = _args("synth", tmp_path, link)
    assert cli(args)[0] == 0
    assert (real / "dataset.json").is_file() and link.is_symlink()
    assert cli(args + ["force=true"])[0] == 0
    assert (real / "notes.txt").read_text() == "mine" and json.loads((real / MANIFEST).read_text())["complete"]
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    code, _, err = cli(_args("synth", tmp_path, dangling))
    assert code == 2 and "does not exist" in err and not (tmp_path / "nowhere").exists()


# --------------------------------------------------------------------------- B20-B23: options out of range
SYNTH_CASES = [
    (["image_size=100000"], "image_size"),
    (["image_size=30000"], "image_size"),
    (["image_size=2000"], "image_size=2000: give 8..1024"),
    (["shard_size=0"], "shard_size=0: give 1 or more"),
    (["val_frac=0.9", "test_frac=0.9"], "val_frac=0.9 + test_frac=0.9"),
    (["val_frac=-0.1"], "val_frac=-0.1: give a fraction in [0, 1)"),
    (["n=2000000000"], "n=2000000000: give 1..10,000,000"),
    (["n=10000000"], "GiB of memory"),
    (["unlabeled=-1"], "unlabeled=-1"),
    (["seed=-1"], "seed=-1"),
]
PACK_CASES = [(["shard_size=0"], "shard_size=0"), (["val_frac=0.9", "test_frac=0.9"], "val_frac=0.9 + test_frac=0.9"),
              (["max_side=-1"], "max_side=-1")]


@pytest.mark.parametrize("opts,named", [pytest.param(o, n, id=" ".join(o)) for o, n in SYNTH_CASES])
def test_synth_options_out_of_range_are_one_line(opts, named, tmp_path, cli):
    out = tmp_path / "ds"
    t0 = time.perf_counter()
    code, _, err = cli(["data", "synth", f"out={out}", *opts])
    assert code == 2 and named in err and time.perf_counter() - t0 < 30
    assert not out.exists()


@pytest.mark.parametrize("opts,named", [pytest.param(o, n, id=" ".join(o)) for o, n in PACK_CASES])
def test_pack_options_out_of_range_leave_the_folder_alone(opts, named, tmp_path, cli):
    """Checked before the folder is touched (before: ``shard_size=0 force=true`` removed the previous dataset, then
    ended in a ValueError traceback)."""
    out = tmp_path / "ds"
    args = _args("pack", tmp_path, out)
    assert cli(args)[0] == 0
    kept = _tree(out)
    code, _, err = cli(args + ["force=true", *opts])
    assert code == 2 and named in err and _tree(out) == kept


# --------------------------------------------------------------------------- B12/B13: JSON that hurts
def _deep(path: Path) -> Path:
    path.write_text("[" * 100000 + "]" * 100000)
    return path


def _sidecars(tmp_path: Path) -> dict:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(300 << 20)  # sparse: 300 MiB that costs no disk
    dev = tmp_path / "dev.json"
    dev.symlink_to("/dev/zero")
    return {"deep": (_deep(tmp_path / "deep.json"), "nested too deeply"),
            "huge": (huge, "300 MiB, over the 256 MiB"), "device": (dev, "not a regular file")}


@pytest.mark.parametrize("case", ["deep", "huge", "device"])
def test_sidecars_that_hurt_are_one_line(case, tmp_path, cli, tiny_train_args):
    path, why = _sidecars(tmp_path)[case]
    t0 = time.perf_counter()
    code, _, err = cli(["train", *tiny_train_args("sc", steps=1, **{"data.sidecars": f"[{path}]"})])
    assert code == 2 and str(path) in err and why in err and time.perf_counter() - t0 < 30


def test_a_cache_manifest_that_hurts_is_one_line(tmp_path, cli, synth_root):
    """`agglom cache check` on a manifest nested 100000 deep, or one that is a device (before: RecursionError
    traceback; "no manifest.json")."""
    folder = tmp_path / "cache" / "tiny-clip"
    folder.mkdir(parents=True)
    args = ["cache check", f"data.root={synth_root}", "data.image_size=32", "teachers=[{name: tiny-clip}]",
            f"cache.out={tmp_path / 'cache'}", "data.num_workers=0"]
    _deep(folder / "manifest.json")
    code, _, err = cli(args)
    assert code == 2 and "manifest.json: JSON nested too deeply" in err and "agglom cache" in err
    (folder / "manifest.json").unlink()
    (folder / "manifest.json").symlink_to("/dev/zero")
    code, _, err = cli(args)
    assert code == 2 and "manifest.json: not a regular file" in err


def test_the_cache_writer_rewrites_a_manifest_it_cannot_read(tmp_path):
    from agglom.cache.writer import _old_manifest

    assert _old_manifest(_deep(tmp_path / "manifest.json")) == {}
    (tmp_path / "dev.json").symlink_to("/dev/zero")
    assert _old_manifest(tmp_path / "dev.json") == {}


def test_markers_and_run_files_that_hurt(tmp_path, cli):
    """An export folder whose ``agglom.json`` is nested 100000 deep is not an agglom export; a reference run's
    metrics.jsonl with such a line (or a line of 2 MiB) keeps its other lines."""
    from agglom.objective.reference import _records

    out = tmp_path / "exp"
    out.mkdir()
    _deep(out / "agglom.json")
    code, _, err = cli(["export", tmp_path / "no-run", f"out={out}"])
    assert code == 2 and "not an agglom export" in err and (out / "agglom.json").is_file()
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "metrics.jsonl").write_text('{"step": 1}\n' + "[" * 100000 + "\n" + "x" * (2 << 20) + '\n{"step": 2}\n')
    assert _records(ref) == [{"step": 1}, {"step": 2}]


# --------------------------------------------------------------------------- pack messages
def test_pack_messages_name_the_file_on_one_line(tmp_path, cli, caplog):
    """A file that is no image is named by its path (before: ``<_io.BytesIO object at 0x...>``); a path holding a
    newline is shown as its repr; a cell over the csv limit names the line its row starts on."""
    _source(tmp_path)
    (tmp_path / "notes").write_text("not an image\n" * 50)
    rows = (tmp_path / "meta.csv").read_text() + f"{tmp_path / 'notes'},1,A\n\"src/sick/im1.png\nx\",1,A\n"
    (tmp_path / "odd.csv").write_text(rows)
    code, _, err = cli(["data", "pack", f"out={tmp_path / 'o1'}", f"csv={tmp_path / 'odd.csv'}"])
    logged = [r.getMessage() for r in caplog.records]
    assert code == 0 and not any("BytesIO" in m for m in logged)
    assert any(f"{tmp_path / 'notes'}: not an image file" in m for m in logged)
    assert any(repr(str(tmp_path / "src/sick/im1.png\nx")) + ": no such file" in m for m in logged)
    big = (tmp_path / "meta.csv").read_text() + "src/sick/im1.png,1," + "A" * 300000 + "\n"
    (tmp_path / "big.csv").write_text(big)
    code, _, err = cli(["data", "pack", f"out={tmp_path / 'o2'}", f"csv={tmp_path / 'big.csv'}"])
    assert code == 2 and "the row starting on line 10 has a cell over 131,072 characters" in err
    newline = tmp_path / "a\nb.csv"
    code, _, err = cli(["data", "pack", f"out={tmp_path / 'o3'}", f"csv={newline}"])
    assert code == 2 and repr(str(newline)) in err
    assert not any((tmp_path / o).exists() for o in ("o2", "o3"))
    assert os.path.isdir(tmp_path / "o1")
