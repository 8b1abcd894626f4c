"""`agglom finetune`: a short erm / groupdro fine-tune through the real CLI exports a folder the teacher zoo
loads and a recipe can name as a teacher; per-group metrics are recorded; undefined AUCs stay undefined."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agglom.cli import main  # noqa: E402

TINY = "model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}"


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("ft") / "synth"
    write_synth(str(root), SynthParams(n=400, seed=1, site_frac=0.2), val_frac=0.15, test_frac=0.15)
    return root


def _args(root, out, group, steps=6):
    return ["finetune", f"data.root={root}", "model=vit_small_patch16_224", TINY, f"optim.steps={steps}",
            "optim.warmup_steps=2", "data.num_workers=0", "data.batch_size=32", "data.epoch_samples=128",
            f"objective.group={group}", "val_interval=3", "log_interval=3", f"out={out}", f"name=ft-{group}",
            "progress=off"]


@pytest.fixture(scope="module")
def exports(synth, tmp_path_factory):
    base = tmp_path_factory.mktemp("ft_out")
    outs = {}
    for group in ("erm", "groupdro"):
        out = base / f"ft-{group}"
        assert main(_args(synth, out, group)) == 0
        outs[group] = out
    return outs


@pytest.mark.parametrize("group", ["erm", "groupdro"])
def test_export_loads_as_teacher(exports, group):
    import teachers

    out = exports[group]
    for f in ("config.json", "model.safetensors", "card.yaml", "finetune.json"):
        assert (out / f).is_file(), f
    card = teachers.load_card(str(out))
    assert card.family == "agglom" and card.name == f"ft-{group}"
    assert card.input_size == (64, 64) and card.summary == "cls"
    assert f"objective {group}" in card.description and "worst-group AUC" in card.description
    assert "λ=" in card.description and "6 steps" in card.description
    assert "site" in card.known_bias and "synth" in card.provenance
    t = teachers.build_teacher(card, input_mean=[0.5, 0.5, 0.5], input_std=[0.5, 0.5, 0.5])
    o = t(torch.randn(2, 3, 64, 64))
    assert o.summary.shape == (2, 32) and o.spatial.shape == (2, 32, 8, 8)
    assert torch.isfinite(o.summary).all()
    # the head is not exported: the weights are the encoder's alone
    from safetensors.torch import load_file

    assert not any(k.startswith("head.") and v.numel() > 0 for k, v in load_file(str(out / "model.safetensors")).items())


@pytest.mark.parametrize("group", ["erm", "groupdro"])
def test_finetune_record(exports, group):
    rec = json.loads((exports[group] / "finetune.json").read_text())
    assert rec["objective"]["group"] == group and rec["steps"] == 6
    assert set(rec["final"]["groups"]) >= {"A", "B"}
    assert "worst_group_auc" in rec and rec["history"] and len(rec["validation"]) == 2
    aucs = [g["auc"] for g in rec["final"]["groups"].values() if g["auc"] is not None]
    if aucs:
        assert rec["worst_group_auc"] == pytest.approx(min(aucs))
    assert (rec["groupdro_q"] is not None) == (group == "groupdro")
    if group == "groupdro":
        assert sum(rec["groupdro_q"].values()) == pytest.approx(1.0, abs=1e-5)


def test_recipe_names_the_export_as_teacher(exports, synth, tmp_path):
    out = exports["groupdro"]
    code = main(["train", "recipe=recipes/demo.yaml", f"data.root={synth}", f"teachers=[{{name: {out}}}]",
                 "optim.steps=3", "optim.warmup_steps=1", "data.num_workers=0", "data.batch_size=16",
                 f"out_dir={tmp_path}", "name=with-ft", "log.interval=1", "log.checkpoint_interval=100",
                 "student.model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}"])
    assert code == 0
    assert (tmp_path / "with-ft" / "config.yaml").is_file()


def test_teacher_source_and_refusals(synth, tmp_path, capsys):
    out = tmp_path / "from-dino"
    code = main(["finetune", f"data.root={synth}", "teacher=tiny-dinov2", "optim.steps=2", "optim.warmup_steps=1",
                 "data.num_workers=0", "data.batch_size=16", "val_interval=0", f"out={out}", "name=from-dino",
                 "progress=off"])
    assert code == 0
    rec = json.loads((out / "finetune.json").read_text())
    assert rec["base"]["card"] == "tiny-dinov2" and rec["preprocessing"]["image_size"] == 56
    assert main(["finetune", f"data.root={synth}", "teacher=tiny-clipp", "optim.steps=1"]) == 2
    assert "did you mean 'tiny-clip'" in capsys.readouterr().err
    assert main(["finetune", f"data.root={synth}"]) == 2  # no encoder
    assert main(["finetune", f"data.root={synth}", "model=vit_tiny_patch16_224", "objective.group=nope"]) == 2


def test_group_metrics_undefined_and_worst_group():
    from agglom.metrics.group_auc import group_auc_metrics

    logits = np.array([[2.0], [-1.0], [0.5], [1.0], [0.2], [3.0]])
    labels = np.array([1, 0, 1, 0, 1, 1])
    groups = np.array([0, 0, 0, 1, 1, 2])  # group 1 mis-ranked, group 2 (unknown) has one class
    m = group_auc_metrics("binary", logits, labels, groups, ["A", "B", "unknown"], [True, True, False])
    assert m["groups"]["A"]["auc"] == 1.0 and m["groups"]["B"]["auc"] == 0.0
    assert m["groups"]["unknown"]["auc"] is None  # one class: undefined, not 0
    assert m["worst_group"] == "B" and m["worst_group_auc"] == 0.0 and m["auc_gap"] == 1.0
