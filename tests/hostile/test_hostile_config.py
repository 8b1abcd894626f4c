"""Hostile and clumsy input at the front door: recipes, overrides, cards, run folders someone sent, the command line.

Each case ends in exit 0 or a one-line reason (exit 1 or 2, no traceback), runs no command, reads no device, and
leaves nothing it does not own changed. The readers' and writers' own classes are in test_hostile_readers.py and
test_hostile_data.py.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agglom.cli import main

ROOT = Path(__file__).parents[2]
TINY = {"teachers": "[{name: tiny-clip}]", "data.num_workers": 0}


def _run(capsys, *argv: str) -> tuple:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synth_root, make_tiny_args):
    """A 4-step run on the tiny cards (its config.yaml is what a received run folder carries)."""
    runs = tmp_path_factory.mktemp("hostile_runs")
    assert main(["train", *make_tiny_args(runs, synth_root, "sent", steps=4, **TINY)]) == 0
    return runs / "sent"


def _received(trained: Path, tmp_path: Path, shards: str) -> Path:
    """A copy of the run whose saved config.yaml reads ``shards``."""
    run = tmp_path / "received"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval", "export", ".lock"))
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("  shards: null", f"  shards: '{shards}'"))
    assert f"shards: '{shards}'" in cfg.read_text()
    return run


# --------------------------------------------------------------------------- commands in shard URLs
PIPE = "pipe:touch {marker}; cat {root}/{{split}}/{{split}}-000000.tar"


@pytest.mark.parametrize("command", ["train", "cache", "eval-received", "curate"])
def test_a_pipe_url_never_runs_from_a_config(command, tmp_path, synth_root, make_tiny_args, trained, capsys):
    marker = tmp_path / "ran"
    pipe = PIPE.format(marker=marker, root=synth_root)
    if command == "train":
        argv = ["train", *make_tiny_args(tmp_path / "runs", synth_root, "p", steps=2, **TINY), f"data.shards={pipe}"]
    elif command == "cache":
        argv = ["cache", f"data.root={synth_root}", f"data.shards={pipe}", "teachers=[{name: tiny-clip}]",
                f"cache.out={tmp_path / 'cache'}", "data.image_size=32", "data.num_workers=0"]
    elif command == "curate":
        argv = ["curate", str(synth_root), f"shards={pipe}", "teacher=tiny-clip", "k=2", "num_workers=0",
                f"out={tmp_path / 'g.json'}", "progress=off"]
    else:  # a run folder someone sent: its config.yaml names the command
        argv = ["eval", f"run={_received(trained, tmp_path, pipe)}", "num_workers=0", f"out={tmp_path / 'ev'}"]
    code, _, err = _run(capsys, *argv)
    assert code == 2
    assert "runs a shell command" in _one_line(err) and "--allow-remote-shards" in err
    assert not marker.exists()


@pytest.mark.parametrize("url", ["https://example.invalid/{split}-000000.tar", "s3://bucket/{split}.tar", "-",
                                 "gs://b/{split}.tar"])
def test_network_and_stdin_urls_are_refused_without_the_flag(url, tmp_path, synth_root, make_tiny_args, capsys):
    code, _, err = _run(capsys, "train", *make_tiny_args(tmp_path / "runs", synth_root, "u", steps=2, **TINY),
                        f"data.shards={url}")
    assert code == 2 and "is not a local file" in _one_line(err)


def test_the_command_line_flag_lets_a_trusted_pipe_through(tmp_path, synth_root, trained, capsys, monkeypatch):
    """--allow-remote-shards is honoured from the command line only (and it reaches the eval of a received run)."""
    from agglom.data.urls import ALLOW_REMOTE_ENV

    monkeypatch.delenv(ALLOW_REMOTE_ENV, raising=False)
    marker = tmp_path / "ran"
    run = _received(trained, tmp_path, PIPE.format(marker=marker, root=synth_root))
    code, _, err = _run(capsys, "eval", f"run={run}", "num_workers=0", f"out={tmp_path / 'ev'}",
                        "--allow-remote-shards")
    assert code == 0, err
    assert marker.exists() and (tmp_path / "ev" / "report.json").is_file()


def test_file_urls_and_bracketed_folders_are_local_files(tmp_path, synth_root, make_tiny_args, capsys):
    """`file:` is a local file; `[1]` in data.root is part of a folder's name, not a glob class."""
    odd = tmp_path / "site [1]"
    shutil.copytree(synth_root, odd)
    from omegaconf import OmegaConf

    from agglom.data.shards import shard_urls

    cfg = OmegaConf.create({"data": {"root": str(odd), "shards": None, "train_split": "train"}})
    assert len(shard_urls(cfg, "train")) == len(list((odd / "train").glob("*.tar"))) > 0
    one = sorted((odd / "train").glob("*.tar"))[0]
    cfg = OmegaConf.create({"data": {"root": str(odd), "shards": f"file:{one}", "train_split": "train"}})
    assert shard_urls(cfg, "train") == [str(one)]


# --------------------------------------------------------------------------- YAML that expands or overrides itself
BOMB = "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9 if i else ["lol"] * 9) + "]\n" for i in range(9))


@pytest.mark.parametrize("text,reason", [
    (BOMB, "anchors and aliases"),
    ("optim:\n  lr: 0.1\n  steps: 3\n  lr: 0.2\n", "key 'lr' is given twice (first at line 2)"),
    ("name: ok\n" + "x: " + "[" * 5000 + "]" * 5000 + "\n", "nested more than"),
    ("name: ${oc.env:HOME}\n", "omegaconf resolver"),
    ("base: &b {lr: 1}\noptim:\n  <<: *b\n", "anchors and aliases"),
])
def test_recipes_that_expand_duplicate_or_leak_are_refused_by_line(text, reason, tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    start = time.perf_counter()
    code, _, err = _run(capsys, "train", f"recipe={recipe}")
    assert code == 2 and reason in _one_line(err) and str(recipe) in err
    assert time.perf_counter() - start < 30  # a guard against the expansion, not a speed claim


@pytest.mark.parametrize("text,reason", [(BOMB, "anchors and aliases"),
                                         ("name: a\nfamily: timm\nname: b\n", "given twice")])
def test_cards_that_expand_or_duplicate_are_refused(text, reason, tmp_path, capsys):
    card = tmp_path / "card.yaml"
    card.write_text(text)
    code, _, err = _run(capsys, "teachers", "show", str(card))
    assert code == 2 and reason in _one_line(err)


def test_a_saved_config_with_an_alias_bomb_is_refused(trained, tmp_path, capsys):
    run = tmp_path / "bomb"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval", "export", ".lock"))
    (run / "config.yaml").write_text(BOMB + (run / "config.yaml").read_text())
    code, _, err = _run(capsys, "eval", f"run={run}", "num_workers=0")
    assert code == 2 and "anchors and aliases" in _one_line(err)


@pytest.mark.parametrize("name", ["secrets.txt", "passwd", "zero"])
def test_a_card_path_is_never_read_unless_it_is_yaml(name, tmp_path, capsys):
    target = Path("/dev/zero") if name == "zero" else tmp_path / name
    if name != "zero":
        target.write_text("api_token: sk-do-not-print\n")
    code, _, err = _run(capsys, "teachers", "show", str(target))
    assert code == 2 and "ends in .yaml or .yml" in _one_line(err) and "sk-do-not-print" not in err


def test_weights_on_a_device_are_named_as_not_a_file(tmp_path, synth_root, make_tiny_args, capsys):
    code, _, err = _run(capsys, "train", *make_tiny_args(tmp_path / "runs", synth_root, "w", steps=2, **TINY),
                        "student.checkpoint=/dev/zero")
    assert code == 2 and "not a regular file" in _one_line(err)


# --------------------------------------------------------------------------- values taken as typed
@pytest.mark.parametrize("key,value", [("name", "007"), ("out_dir", "runs/a #1"), ("name", "x: y"),
                                       ("name", "line\nbreak")])
def test_paths_and_names_are_taken_as_typed(key, value):
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    cfg = load_config(Recipe, [f"{key}={value}", "teachers=[{name: tiny-clip}]"])
    assert cfg[key] == value


def test_optional_strings_still_clear_with_null():
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    for v in ("null", ""):
        assert load_config(Recipe, [f"data.shards={v}", "teachers=[{name: tiny-clip}]"]).data.shards is None


def test_a_name_with_leading_zeros_names_its_run_folder(tmp_path, synth_root, make_tiny_args, capsys):
    code, _, err = _run(capsys, "train", *make_tiny_args(tmp_path / "runs", synth_root, "007", steps=1, **TINY))
    assert code == 0, err
    assert (tmp_path / "runs" / "007" / "config.yaml").is_file()


# --------------------------------------------------------------------------- runs in progress
def _hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s run lock until killed (as `agglom train` or `agglom eval` does)."""
    code = ("import sys, time; from agglom.runlock import RunLock\n"
            f"with RunLock({str(folder)!r}):\n    print('held', flush=True); time.sleep(300)\n")
    p = subprocess.Popen([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         stdout=subprocess.PIPE, text=True)
    for line in p.stdout:  # (a "taking it over" note comes first when an earlier holder was killed)
        if line.strip() == "held":
            return p
    raise AssertionError("the lock holder ended before taking the lock")


@pytest.mark.parametrize("command", ["export", "eval"])
def test_a_run_still_training_is_not_exported_or_evaluated(command, trained, tmp_path, capsys):
    holder = _hold_lock(trained)
    try:
        code, _, err = _run(capsys, command, f"run={trained}", f"out={tmp_path / 'o'}",
                            *(["num_workers=0"] if command == "eval" else []))
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert code == 2 and f"still being trained by pid {holder.pid}" in _one_line(err)
    assert not (tmp_path / "o").exists()


def test_two_evaluations_into_one_folder(trained, tmp_path, capsys):
    out = tmp_path / "ev"
    holder = _hold_lock(out)
    try:
        code, _, err = _run(capsys, "eval", f"run={trained}", f"out={out}", "num_workers=0")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert code == 2 and f"is being evaluated by pid {holder.pid}" in _one_line(err)
    assert _run(capsys, "eval", f"run={trained}", f"out={out}", "num_workers=0")[0] == 0
    code, stdout, _ = _run(capsys, "eval", f"run={trained}", f"out={out}", "num_workers=0")
    assert code == 0 and "replacing the report of" in stdout


# --------------------------------------------------------------------------- spreadsheets, signals, the machine
def test_predictions_csv_keys_open_as_text_and_round_trip(tmp_path):
    from agglom.eval.predictions import read_predictions_csv, write_predictions_csv

    keys = ["=HYPERLINK(\"http://x\")", "+1", "-cmd|' /C calc'!A0", "@SUM(1)", "'quoted", "plain"]
    path = tmp_path / "predictions.csv"
    write_predictions_csv(path, [{"key": k, "split": "test", "label": 1, "score": 0.5, "site": "=A"} for k in keys])
    cells = [line.split(",", 1)[0] for line in path.read_text().splitlines()[1:]]
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)
    back = read_predictions_csv(path)
    assert list(back["key"]) == keys and set(back["site"]) == {"=A"}


def test_sigint_ends_with_one_line_and_code_130(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    # Ctrl-C's default action in the child, whatever the suite inherited: a suite started in the background by a
    # non-interactive shell (`make test &`) has SIGINT ignored, the child would inherit that and never be interrupted
    p = subprocess.Popen([sys.executable, "-m", "agglom", "data", "synth", f"out={tmp_path / 'ds'}", "n=200000",
                          "image_size=32"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and not (tmp_path / "ds").exists():
        time.sleep(0.05)  # interrupt it once the command runs (it has made its output folder)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=300)  # generous: on a loaded machine (CI with other jobs) cleanup is slow
    assert p.returncode == 130 and "Traceback" not in err
    assert "interrupted" in _one_line(err)


def test_an_os_refusal_is_one_line_naming_the_file(tmp_path, synth_root, make_tiny_args, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("mine")
    code, _, err = _run(capsys, "train", *make_tiny_args(blocker, synth_root, "x", steps=1, **TINY))
    assert code in (1, 2) and str(blocker) in _one_line(err)
    assert blocker.read_text() == "mine"


# --------------------------------------------------------------------------- a received run folder
def _copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "copy"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("eval", "export", ".lock"))
    return run


@pytest.mark.parametrize("link", ["folder", "report"])
def test_eval_never_writes_through_a_link_in_a_received_run(link, trained, tmp_path, capsys):
    run, victim = _copy(trained, tmp_path), tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    if link == "folder":
        (run / "eval").symlink_to(victim)
    else:
        (run / "eval").mkdir()
        (run / "eval" / "report.json").symlink_to(victim / "keep.txt")
    code, _, err = _run(capsys, "eval", f"run={run}", "num_workers=0")
    assert code == 2 and "symbolic link" in _one_line(err)
    assert [p.name for p in victim.iterdir()] == ["keep.txt"] and (victim / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("damage", ["latest-outside", "teachers-truncated", "teachers-deep", "teachers-shape"])
def test_a_damaged_run_folder_is_one_line(damage, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    if damage == "latest-outside":
        (run / "checkpoints" / "latest").write_text("../../../../etc")
    elif damage == "teachers-truncated":
        (run / "teachers.json").write_text((run / "teachers.json").read_text()[:40])
    elif damage == "teachers-deep":
        (run / "teachers.json").write_text("[" * 100000 + "]" * 100000)
    else:
        (run / "teachers.json").write_text('["tiny-clip"]')
    code, _, err = _run(capsys, "export", f"run={run}", f"out={tmp_path / 'x'}")
    named = "not a checkpoint folder" if damage == "latest-outside" else "teachers.json"
    assert code == 2 and named in _one_line(err)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("pattern", ["/x/{000000000..999999999}.tar", "/x/" + "{a,b}" * 40 + ".tar"])
def test_a_brace_pattern_that_multiplies_out_is_refused_before_expanding(pattern, tmp_path, synth_root,
                                                                         make_tiny_args, capsys):
    start = time.perf_counter()
    code, _, err = _run(capsys, "train", *make_tiny_args(tmp_path / "runs", synth_root, "b", steps=1, **TINY),
                        f"data.shards={pattern}")
    assert code == 2 and "names more than 100,000 shard files" in _one_line(err)
    assert time.perf_counter() - start < 30  # a guard against the expansion, not a speed claim


@pytest.mark.parametrize("recipe", ["/dev/zero", "folder", "big"])
def test_a_recipe_that_is_not_a_small_file_is_refused_unread(recipe, tmp_path, capsys):
    path = {"/dev/zero": Path("/dev/zero"), "folder": tmp_path}.get(recipe, tmp_path / "big.yaml")
    if recipe == "big":
        path.write_text("# " + "x" * (5 << 20) + "\n")
    code, _, err = _run(capsys, "train", f"recipe={path}")
    assert code == 2 and ("at most 4 MiB" if recipe == "big" else "not a regular file") in _one_line(err)


# --------------------------------------------------------------------------- found by probing (cases not planned)
def _edit_config(run: Path, old: str, new: str) -> None:
    cfg = run / "config.yaml"
    text = cfg.read_text()
    assert old in text, old
    cfg.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("damage", ["empty", "list", "section-is-text", "timm-name", "negative-patch", "huge-width"])
def test_a_hostile_saved_config_is_one_line(damage, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    if damage == "empty":
        (run / "config.yaml").write_text("")
    elif damage == "list":
        (run / "config.yaml").write_text("[1, 2]\n")
    elif damage == "section-is-text":
        _edit_config(run, "\ndata:\n", "\ndata: hello\nxdata:\n")
    elif damage == "timm-name":
        _edit_config(run, "model: vit_small_patch16_224", "model: ../../etc/passwd")
    elif damage == "negative-patch":
        _edit_config(run, "patch_size: 8", "patch_size: -8")
    else:
        _edit_config(run, "embed_dim: 32", "embed_dim: 400000")
    code, _, err = _run(capsys, "export", f"run={run}", f"out={tmp_path / 'x'}")
    assert code in (1, 2) and str(run) in _one_line(err)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("spec", [{"summary_dim": 10 ** 12}, {"grid": [-1, 10 ** 9]}, {"grid": [4]}])
def test_a_hostile_teacher_roster_is_refused(spec, trained, tmp_path, capsys):
    import json

    run = _copy(trained, tmp_path)
    roster = json.loads((run / "teachers.json").read_text())
    roster[0].update(spec)
    (run / "teachers.json").write_text(json.dumps(roster))
    code, _, err = _run(capsys, "export", f"run={run}", f"out={tmp_path / 'x'}")
    assert code == 2 and "teachers.json" in _one_line(err)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("damage", ["truncated", "device", "checkpoint-link"])
def test_damaged_weights_in_a_received_run_are_one_line(damage, trained, tmp_path, capsys):
    run = _copy(trained, tmp_path)
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    for name in ("model.safetensors", "ema.safetensors"):
        if (latest / name).exists():
            if damage == "truncated":
                (latest / name).write_bytes((latest / name).read_bytes()[:100])
            elif damage == "device":
                (latest / name).unlink()
                (latest / name).symlink_to("/dev/zero")
    if damage == "checkpoint-link":
        shutil.rmtree(latest)
        latest.symlink_to("/etc")
    code, _, err = _run(capsys, "export", f"run={run}", f"out={tmp_path / 'x'}")
    named = "not a checkpoint folder" if damage == "checkpoint-link" else "model.safetensors"
    assert code == 2 and named in _one_line(err)
    assert not (tmp_path / "x").exists()


CARD = {"name": "odd", "family": "timm", "model": "vit_small_patch16_224", "input_size": 32,
        "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}


@pytest.mark.parametrize("field,value,reason", [
    ("input_size", 100000, "each at most 8192"),
    ("seed", 10 ** 23, "[0, 2^63)"),
    ("mean", [float("nan"), 0.5, 0.5], "finite numbers"),
    ("model_args", {"checkpoint_path": "evil.pth"}, "without checkpoint_path"),
    ("model_args", {"patch_size": 8, "embed_dim": 4800000, "depth": 1, "num_heads": 2}, "parameters, over the"),
])
def test_a_card_asking_too_much_is_refused_by_field(field, value, reason, tmp_path, capsys):
    import yaml

    card = tmp_path / "odd.yaml"
    card.write_text(yaml.safe_dump({**CARD, field: value}))
    start = time.perf_counter()
    code, _, err = _run(capsys, "teachers", "check", str(card))
    assert code == 2 and reason in _one_line(err)
    assert time.perf_counter() - start < 30  # a guard: the card is refused before anything is built


def test_a_card_whose_weights_are_a_text_file_is_one_line(tmp_path, capsys):
    import yaml

    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    card = tmp_path / "c.yaml"
    card.write_text(yaml.safe_dump({**CARD, "weights": {"source": "file", "path": str(text)}}))
    code, _, err = _run(capsys, "teachers", "check", str(card))
    assert code == 2 and "as a weights file" in _one_line(err)


@pytest.mark.parametrize("option,value", [("data.image_size", 100000), ("data.num_workers", 1000),
                                          ("data.batch_size", 10 ** 8)])
def test_sizes_no_machine_has_are_refused_before_starting(option, value, tmp_path, synth_root, make_tiny_args, capsys):
    code, _, err = _run(capsys, "train", *make_tiny_args(tmp_path / "runs", synth_root, "s", steps=1, **TINY),
                        f"{option}={value}")
    assert code == 2 and option in _one_line(err)


def test_the_cli_prints_every_teacher_user_error_on_one_line():
    """The CLI recognises teachers' user errors by module (it must not import torch to do so): none may drift."""
    from agglom.cli import TEACHER_ERROR_MODULES
    from teachers.build import USER_ERRORS

    assert {c.__module__ for c in USER_ERRORS} <= set(TEACHER_ERROR_MODULES)


@pytest.mark.parametrize("argv", [["train", "data.group_weights=[1,2]"], ["train", "teachers={a: 1}"],
                                  ["data", "pack", "out=unused", "src=unused", "attr_bins=[0,40]"]])
def test_a_value_of_the_wrong_shape_is_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "does not fit" in err and "Traceback" not in err and not (tmp_path / "unused").exists()
