"""Hostile and clumsy input to the commands that write: dataset writers (`data synth`, `data pack` from a CSV or a
folder), `data join`, `agglom export`, the fine-tune export and `agglom curate`. Each case ends with exit 0 (the
problem counted and reported) or a one-line message naming the file (exit 2: the user's to fix; exit 1: the
environment's), never a traceback; nothing the user owns is deleted, and no partial output is left."""
from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agglom.cli import main
from agglom.data.manifest import MANIFEST
from agglom.data.writer import read_datasheet

WRITERS = ("synth", "pack_csv", "pack_folder")


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(path)


def _source(tmp: Path) -> Path:
    """Eight 16-px images in two class folders, and a CSV naming them (path,label,site)."""
    src = tmp / "src"
    rows = ["path,label,site"]
    for i in range(8):
        cls = ("healthy", "sick")[i % 2]
        _png(src / cls / f"im{i}.png", 30 * i)
        rows.append(f"src/{cls}/im{i}.png,{i % 2},{'AB'[i // 4]}")
    (tmp / "meta.csv").write_text("\n".join(rows) + "\n")
    return src


def _args(kind: str, tmp: Path, out: Path) -> list:
    """The command line of one dataset writer into ``out`` (a handful of 16-px images, several shards)."""
    if kind == "synth":
        return ["data", "synth", f"out={out}", "n=16", "image_size=16", "shard_size=3"]
    _source(tmp)
    if kind == "pack_csv":
        return ["data", "pack", f"out={out}", f"csv={tmp / 'meta.csv'}", "shard_size=2"]
    return ["data", "pack", f"out={out}", f"src={tmp / 'src'}", "shard_size=2"]


def _shards(root: Path) -> list:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.tar*"))


# --------------------------------------------------------------------------- force
@pytest.mark.parametrize("kind", WRITERS)
def test_force_removes_only_what_agglom_wrote(kind, tmp_path, cli):
    out = tmp_path / "ds"
    args = _args(kind, tmp_path, out)
    assert cli(args)[0] == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and "dataset.json" in manifest["files"]
    (out / "notes.txt").write_text("mine")
    _png(out / "backups" / "old.png", 1)
    (out / "train" / "README.txt").write_text("mine too")
    (out / "demographics_attrs.json").write_text("{}")  # e.g. a sidecar `data join` wrote
    code, text, err = cli(args)
    assert code == 2 and "force=true" in err
    code, text, _ = cli(args + ["force=true"])
    assert code == 0
    assert "removed the previous dataset" in text and "notes.txt" in text and "backups/" in text
    assert (out / "notes.txt").read_text() == "mine" and (out / "backups" / "old.png").is_file()
    assert (out / "train" / "README.txt").read_text() == "mine too" and (out / "demographics_attrs.json").is_file()
    assert read_datasheet(out)["samples"] > 0


@pytest.mark.parametrize("kind", WRITERS)
def test_force_refuses_dataset_files_it_did_not_write(kind, tmp_path, cli):
    out = tmp_path / "ds"
    args = _args(kind, tmp_path, out)
    assert cli(args)[0] == 0
    before = _shards(out)
    (out / "backups").mkdir()
    (out / "backups" / "old.tar").write_bytes(b"x")
    (out / "other").mkdir()
    (out / "other" / "dataset.json").write_text("{}")
    code, _, err = cli(args + ["force=true"])
    assert code == 2 and "backups/old.tar" in err and "other/dataset.json" in err and str(out) in err
    assert (out / "backups" / "old.tar").is_file() and (out / "other" / "dataset.json").is_file()
    assert _shards(out) == sorted(before + ["backups/old.tar"])  # nothing was removed


def test_force_on_a_dataset_without_manifest(tmp_path, cli):
    """A dataset from before manifests: its datasheet's own files are agglom's; anything else it does not list is
    refused, a folder that is not agglom's at all too."""
    out = tmp_path / "old"
    args = _args("synth", tmp_path, out) + ["twin=true"]
    assert cli(args)[0] == 0
    (out / MANIFEST).unlink()
    (out / "keep.md").write_text("mine")
    assert cli(args)[0] == 2
    assert cli(args + ["force=true"])[0] == 0
    assert (out / "keep.md").is_file() and read_datasheet(out / "twin")["samples"] == 16
    (out / MANIFEST).unlink()
    (out / "train" / "train-000099.tar").write_bytes(b"x")  # not a shard the datasheet counts
    code, _, err = cli(args + ["force=true"])
    assert code == 2 and "train/train-000099.tar" in err and (out / "train" / "train-000099.tar").is_file()
    foreign = tmp_path / "foreign"
    (foreign / "train").mkdir(parents=True)
    (foreign / "dataset.json").write_text('{"made by": "another tool"}')
    (foreign / "train" / "a.tar").write_bytes(b"x")
    code, _, err = cli(_args("synth", tmp_path, foreign) + ["force=true"])
    assert code == 2 and "no record" in err and (foreign / "train" / "a.tar").is_file()


# --------------------------------------------------------------------------- failure part-way
def _fail_on_write(monkeypatch, exc: BaseException, after: int) -> None:
    import webdataset as wds

    real = wds.TarWriter.write
    calls = {"n": 0}

    def write(self, obj):
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return real(self, obj)

    monkeypatch.setattr(wds.TarWriter, "write", write)


@pytest.mark.parametrize("kind", WRITERS)
def test_disk_full_part_way_leaves_nothing(kind, tmp_path, cli, monkeypatch):
    out = tmp_path / "ds"
    args = _args(kind, tmp_path, out)
    _fail_on_write(monkeypatch, OSError(errno.ENOSPC, "No space left on device"), after=5)
    code, _, err = cli(args)
    assert code == 1 and "disk full while writing" in err and ".tar" in err and "free space and rerun" in err
    assert not out.exists()  # this run created the folder: all of it is gone
    out.mkdir()
    (out / "mine.txt").write_text("mine")
    code, _, err = cli(args)
    assert code == 1 and sorted(p.name for p in out.iterdir()) == ["mine.txt"]
    monkeypatch.undo()
    assert cli(args)[0] == 0  # a rerun is not refused


def test_interrupt_and_killed_run_are_cleaned_up(tmp_path, capsys, cli, monkeypatch):
    out = tmp_path / "ds"
    args = _args("pack_csv", tmp_path, out)
    _fail_on_write(monkeypatch, KeyboardInterrupt(), after=3)
    try:
        assert main(args) != 0  # the CLI may report Ctrl-C itself
    except KeyboardInterrupt:
        pass
    capsys.readouterr()
    assert not out.exists()
    monkeypatch.undo()
    _fail_on_write(monkeypatch, RuntimeError("a bug part-way"), after=3)
    with pytest.raises(RuntimeError):
        main(args)
    assert not out.exists()
    monkeypatch.undo()
    # a run killed outright leaves its manifest unfinished; the next run removes what it lists, unasked
    out.mkdir()
    (out / "train").mkdir()
    (out / "train" / "train-000000.tar.tmp").write_bytes(b"half")
    (out / MANIFEST).write_text(json.dumps({"schema": "agglom.manifest/1", "complete": False, "pid": 2 ** 22 + 7,
                                            "host": "elsewhere", "files": ["train/train-000000.tar"],
                                            "folders": ["train"]}))
    code, text, _ = cli(args)
    assert code == 0 and "unfinished output of an earlier run" in text
    assert not (out / "train" / "train-000000.tar.tmp").exists()


# --------------------------------------------------------------------------- out that is a file, broken datasheet
@pytest.mark.parametrize("kind", WRITERS + ("join", "export", "curate"))
def test_out_is_a_regular_file(kind, tmp_path, cli):
    target = tmp_path / "taken"
    target.write_text("mine")
    if kind in WRITERS:
        args = _args(kind, tmp_path, target)
    elif kind == "join":
        root = tmp_path / "ds"
        assert cli(_args("synth", tmp_path, root))[0] == 0
        (tmp_path / "t.csv").write_text("key,scanner\nsynth000000,s1\n")
        args = ["data", "join", root, f"csv={tmp_path / 't.csv'}", f"out={target}"]
    elif kind == "export":
        args = ["export", tmp_path / "no-run", f"out={target}"]
    else:
        root = tmp_path / "ds"
        assert cli(_args("synth", tmp_path, root))[0] == 0
        args = ["curate", root, "teacher=tiny-clip", f"out={target}", "num_workers=0", "progress=off"]
    code, _, err = cli(args)
    assert code == 2 and str(target) in err and target.read_text() == "mine"


def test_truncated_datasheet(tmp_path, cli):
    out = tmp_path / "ds"
    assert cli(_args("synth", tmp_path, out))[0] == 0
    sheet = out / "dataset.json"
    sheet.write_text(sheet.read_text()[:200])
    (out / MANIFEST).unlink()
    for args in (["data", "info", out], ["data", "synth", f"out={out}", "force=true"],
                 ["curate", out, "teacher=tiny-clip", "num_workers=0", "progress=off"]):
        code, _, err = cli(args)
        assert code == 2 and f"{sheet}: not valid JSON at line" in err and "agglom data pack/synth" in err
    assert sheet.is_file()


# --------------------------------------------------------------------------- read-only output folders
@pytest.fixture()
def read_only(monkeypatch):
    """Make a folder read-only: chmod, and (root ignores modes) refuse creating anything inside it."""
    folders = []

    def guard(path) -> None:
        p = os.path.abspath(os.fspath(path))
        if any(p.startswith(str(f) + os.sep) for f in folders):
            raise PermissionError(errno.EACCES, "Permission denied", p)

    real_open, real_mkdir = builtins.open, os.mkdir

    def fake_open(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            guard(file)
        return real_open(file, mode, *a, **k)

    def fake_mkdir(path, *a, **k):
        guard(path)
        return real_mkdir(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        folders.append(folder.resolve())
        return folder

    yield make
    for f in folders:
        f.chmod(0o755)


@pytest.mark.parametrize("kind", WRITERS + ("join", "curate", "finetune_export"))
def test_read_only_output_folder(kind, tmp_path, cli, read_only):
    ro = tmp_path / "ro"
    if kind in WRITERS:
        args = _args(kind, tmp_path, ro / "out")
    elif kind in ("join", "curate"):
        root = tmp_path / "ds"
        assert cli(_args("synth", tmp_path, root))[0] == 0
        (tmp_path / "t.csv").write_text("key,scanner\nsynth000000,s1\n")
        args = (["data", "join", root, f"csv={tmp_path / 't.csv'}", f"out={ro / 'attrs.json'}"] if kind == "join" else
                ["curate", root, "teacher=tiny-clip", "k=2", f"out={ro / 'groups.json'}", "num_workers=0",
                 "progress=off", "splits=[val]"])
    read_only(ro)
    if kind == "finetune_export":
        from agglom.errors import ReadableError
        from agglom.finetune.export import staging_dir

        with pytest.raises(ReadableError, match=f"cannot write in {ro}"):
            staging_dir(ro / "teacher", True)
        return
    code, _, err = cli(args)
    assert code == 1 and f"cannot write in {ro}" in err and "Permission denied" in err
    assert list(ro.iterdir()) == []


# --------------------------------------------------------------------------- pack CSVs: duplicates, labels, encodings
def _pack_csv(tmp_path: Path, body: str, cli, *extra) -> tuple:
    _source(tmp_path)
    (tmp_path / "in.csv").write_text(body)
    return cli(["data", "pack", f"out={tmp_path / 'out'}", f"csv={tmp_path / 'in.csv'}", *extra])


def test_duplicate_rows(tmp_path, cli):
    rows = [f"src/{('healthy', 'sick')[i % 2]}/im{i}.png,{i % 2}" for i in range(8)]
    code, text, _ = _pack_csv(tmp_path, "\n".join(["path,label", *rows, rows[2], "./" + rows[5]]) + "\n", cli)
    assert code == 0 and "2 row(s) repeat an earlier row exactly (lines 10, 11)" in text
    sheet = read_datasheet(tmp_path / "out")
    assert sheet["samples"] == 8 and sheet["skipped"] == {"duplicate_row": 2}
    shutil.rmtree(tmp_path / "out")
    code, _, err = _pack_csv(tmp_path, "\n".join(["path,label", *rows, "src/healthy/im2.png,1"]) + "\n", cli)
    assert code == 2 and "'src/healthy/im2.png' is listed twice with a different label (lines 4 and 10)" in err
    assert not (tmp_path / "out").exists()


LABELS = {  # label cells of eight rows -> (exit code, what the datasheet or the message says)
    "spellings of 1": (["0", "1.0", "0", " 1 ", "0", "1", "+0", "1"], 0, "binary 2"),
    "yes among 0/1": (["0", "1", "0", "1", "yes", "1", "0", "1"], 2, "mixes numbers and words: 'yes' (line 6)"),
    "stray word": (["yes", "no"] * 20 + ["maybe"], 2, "looks binary (no / yes in 40 of 41 rows) but also holds: "
                                                      "'maybe' (line 42)"),
    "stray number": (["0", "1"] * 20 + ["5"], 2, "looks binary (0 / 1 in 40 of 41 rows) but also holds: '5'"),
    "two spellings": (["Yes", "no", "yes", "no", "yes", "no", "yes", "no"], 2, "spells a class name several ways"),
    "not whole": (["0", "1", "0.5", "1", "0", "1", "0", "1"], 2, "not whole: '0.5' (line 4)"),
    "words": (["cat", "dog", "bird", "dog", "cat", "bird", "cat", "dog"], 0, "multiclass 3"),
    "three numbers": (["0", "1", "2", "1", "0", "1", "0", "1"], 0, "multiclass 3"),
}


@pytest.mark.parametrize("case", sorted(LABELS))
def test_label_columns(case, tmp_path, cli):
    cells, want_code, want = LABELS[case]
    rows = [f"src/{('healthy', 'sick')[i % 8 % 2]}/im{i % 8}.png,{v}" for i, v in enumerate(cells)]
    if len(cells) > 8:  # more rows than images: one row per image would be a conflict; point the rest elsewhere
        rows = [f"src/x{i}.png,{v}" for i, v in enumerate(cells)]
    code, _, err = _pack_csv(tmp_path, "path,label\n" + "\n".join(rows) + "\n", cli)
    assert code == want_code, err
    if code == 0:
        lab = read_datasheet(tmp_path / "out")["label"]
        assert f"{lab['type']} {lab['num_classes']}" == want
    else:
        assert "label column 'label'" in err and want in err and not (tmp_path / "out").exists()


def _encode(text: str, how: str) -> bytes:
    return {"bom": "\ufeff" + text, "utf8": text}.get(how, text).encode("latin-1" if how == "latin1" else "utf-8")


@pytest.mark.parametrize("how", ["bom", "latin1"])
@pytest.mark.parametrize("where", ["pack_csv", "attrs_csv", "join"])
def test_csv_encodings(where, how, tmp_path, cli):
    src = _source(tmp_path)
    out = tmp_path / "out"
    table = tmp_path / "table.csv"
    if where == "pack_csv":
        table.write_bytes(_encode((tmp_path / "meta.csv").read_text().replace(",A\n", ",Zürich\n"), how))
        args = ["data", "pack", f"out={out}", f"csv={table}"]
    else:
        table.write_bytes(_encode("file,city\n" + "".join(f"im{i}.png,Zürich\n" for i in range(8)), how))
        if where == "attrs_csv":
            args = ["data", "pack", f"out={out}", f"src={src}", f"attrs_csv={table}"]
        else:
            assert cli(["data", "pack", f"out={out}", f"src={src}"])[0] == 0
            args = ["data", "join", out, f"csv={table}", "on=file", "match=name"]
    code, text, err = cli(args)
    if how == "bom":
        assert code == 0, err
        if where != "pack_csv":
            assert "8 " in text and "matched" in text
    else:
        assert code == 2 and f"{table}: not UTF-8 text (byte 0xfc on line 2" in err and "CSV UTF-8" in err


def test_ragged_rows_and_repeated_columns(tmp_path, cli):
    code, _, err = _pack_csv(tmp_path, "path,label,site\nsrc/healthy/im0.png,0,A,extra\n", cli)
    assert code == 2 and "line 2 has 4 cells but the header has 3 columns" in err
    code, _, err = _pack_csv(tmp_path, "path,label,label\nsrc/healthy/im0.png,0,1\n", cli)
    assert code == 2 and "column 'label' appears twice in the header" in err


def test_pack_into_its_own_image_folder(tmp_path, cli):
    src = _source(tmp_path)
    code, _, err = cli(["data", "pack", f"out={src / 'shards'}", f"src={src}"])
    assert code == 2 and "is inside src=" in err and not (src / "shards").exists()


def test_bad_keys_and_splits(tmp_path, cli):
    rows = "".join(f"src/{('healthy', 'sick')[i % 2]}/im{i}.png,{i % 2},id.{i},{'train' if i else ''}\n"
                   for i in range(8))
    code, _, err = _pack_csv(tmp_path, "path,label,id,split\n" + rows, cli, "key_col=id")
    assert code == 2 and "key_col 'id' holds 'id.0' (line 2" in err
    code, _, err = _pack_csv(tmp_path, "path,label,id,split\n" + rows.replace("id.", "id"), cli, "split_col=split")
    assert code == 2 and "split_col 'split' holds '' (line 2)" in err


# --------------------------------------------------------------------------- join / curate / export targets
def test_join_and_curate_leave_user_files(tmp_path, cli):
    root = tmp_path / "ds"
    assert cli(_args("synth", tmp_path, root))[0] == 0
    (tmp_path / "t.csv").write_text("key,scanner\nsynth000000,s1\n")
    mine = tmp_path / "mine.json"
    mine.write_text('{"my": "data"}')
    code, _, err = cli(["data", "join", root, f"csv={tmp_path / 't.csv'}", f"out={mine}"])
    assert code == 2 and "not a sidecar agglom data join wrote" in err
    code, _, err = cli(["curate", root, "teacher=tiny-clip", f"out={mine}"])
    assert code == 2 and "not an agglom sidecar" in err and mine.read_text() == '{"my": "data"}'
    code, _, err = cli(["data", "join", root, f"csv={tmp_path / 't.csv'}", f"out={tmp_path}"])
    assert code == 2 and "is a folder" in err


def test_curate_refuses_a_key_in_two_splits(tmp_path, cli):
    root = tmp_path / "ds"
    assert cli(_args("synth", tmp_path, root))[0] == 0
    val = sorted((root / "val").glob("*.tar"))[0]
    shutil.copy(sorted((root / "train").glob("*.tar"))[0], val)  # the train keys again, in val
    code, _, err = cli(["curate", root, "teacher=tiny-clip", "k=2", "splits=[train,val]", "num_workers=0",
                        "progress=off", f"out={tmp_path / 'g.json'}"])
    assert code == 2 and "in split 'train' and in split 'val'" in err and "splits=[val]" in err
    assert not (tmp_path / "g.json").exists()


def test_export_targets(tmp_path, cli):
    """`agglom export` checks ``out`` before the run is read: only an agglom export is replaced."""
    run_dir = tmp_path / "no-run"
    out = tmp_path / "exp"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF")
    code, _, err = cli(["export", run_dir, f"out={out}"])
    assert code == 2 and "not an agglom export (thesis.pdf)" in err and (out / "thesis.pdf").is_file()
    (out / "agglom.json").write_text(json.dumps({"schema": "agglom.export/1", "files": ["agglom.json"]}))
    code, _, err = cli(["export", run_dir, f"out={out}"])
    assert code == 2 and "did not write (thesis.pdf)" in err and (out / "thesis.pdf").is_file()
    code, _, err = cli(["export", run_dir, f"out={out}", "force=false"])
    assert code == 2 and "pass force=true" in err


def test_finetune_export_replaces_only_its_own_folder(tmp_path):
    from agglom.config.load import ConfigError
    from agglom.finetune.export import publish, staging_dir

    out = tmp_path / "teacher"
    for round_ in range(2):
        tmp = staging_dir(out, True)
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"w%d" % round_)
        publish(tmp, out, {"family": "agglom"}, {"schema": "agglom.finetune/1"})
    assert (out / "model.safetensors").read_bytes() == b"w1"
    assert json.loads((out / "finetune.json").read_text())["files"] == ["card.yaml", "finetune.json",
                                                                        "model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["teacher"]  # no staging or old folder left
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="did not write"):
        staging_dir(out, True)
    with pytest.raises(ConfigError, match="force=true"):
        staging_dir(out, False)
    assert (out / "notes.txt").is_file()
