"""Zero-shot through a CLIP-family text tower: the towers reproduce their library's text embeddings exactly (also
after a trip through the adapter pack's folder format), the scoring and the per-group metrics against a case
computed by hand, prompt parsing, and `agglom eval zero_shot=...` end to end on a run and on its export."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

import teachers
from agglom.cli import main
from agglom.eval.report.schema import validate_report
from agglom.eval.zero_shot.zero_shot import (
    PromptError,
    class_embeddings,
    label_scores,
    parse_prompts,
    zero_shot_probs,
    zero_shot_section,
)
from teachers import TextTowerUnavailable, build_text_tower, card_from_dict, has_text_tower, load_text_tower

PROMPTS = ["a scan of a healthy organ", "a scan of an organ with a lesion", "x", "🙂 unicode and a rather long "
           "prompt that runs past the sixteen tokens of the tiny towers"]
FAST_EVAL = ["eval.bootstrap=20", "eval.label_fractions=[]", "num_workers=0"]


def _card(name: str, **over) -> teachers.TeacherCard:
    d = yaml.safe_load((teachers.cards.CARDS_DIR / f"{name}.yaml").read_text())
    d.update(over)
    return card_from_dict(d)


# --------------------------------------------------------------------------- text towers: exact and portable
def test_open_clip_text_tower_is_open_clips_own(tmp_path):
    """A full open_clip checkpoint: the tower's embeddings are CLIP.encode_text's, bit for bit, before and after
    save/load; the logit scale is the checkpoint's. (The reference model is frozen like the tower: with frozen
    weights torch's MultiheadAttention takes its fused path, which differs from the unfused one in the last bits.)"""
    import open_clip

    teachers.build_teacher("tiny-clip")  # registers the card's config with open_clip
    torch.manual_seed(11)
    clip = open_clip.create_model("agglom-tiny-clip").eval().requires_grad_(False)
    with torch.no_grad():
        clip.logit_scale.fill_(2.5)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    tower = build_text_tower(_card("tiny-clip", weights={"source": "file", "path": str(tmp_path / "clip.pt")}))
    tokens = open_clip.get_tokenizer("agglom-tiny-clip")(PROMPTS)
    with torch.no_grad():
        ref = clip.encode_text(tokens)
    got = tower(PROMPTS)
    assert torch.equal(got, ref)
    assert tower.logit_scale == pytest.approx(math.exp(2.5)) and tower.logit_bias is None
    again = load_text_tower(tower.save(tmp_path / "packed"))
    assert torch.equal(again(PROMPTS), ref) and again.logit_scale == tower.logit_scale
    assert not any(p.requires_grad for p in again.parameters())
    # an image-tower-only checkpoint cannot give zero-shot, and says so
    torch.save({k: v for k, v in clip.state_dict().items() if k.startswith("visual.")}, tmp_path / "visual.pt")
    with pytest.raises(TextTowerUnavailable, match="image tower only"):
        build_text_tower(_card("tiny-clip", weights={"source": "file", "path": str(tmp_path / "visual.pt")}))


@pytest.mark.parametrize("arch", ["siglip", "clip"])
def test_transformers_text_tower_is_the_models_own(tmp_path, arch):
    """A save_pretrained two-tower model (SigLIP, CLIP) with its tokenizer: the tower's embeddings are the model's
    own get_text_features, bit for bit, before and after save/load; logit scale (and SigLIP's bias) are the model's."""
    from transformers import AutoConfig, AutoModel

    from teachers.families.hf_text import byte_tokenizer

    d = yaml.safe_load((teachers.cards.CARDS_DIR / "tiny-hf-siglip.yaml").read_text())
    args = d["model_args"] if arch == "siglip" else {
        "vision_config": dict(d["model_args"]["vision_config"]), "projection_dim": 24,
        "text_config": {k: v for k, v in d["model_args"]["text_config"].items() if k != "projection_size"}}
    torch.manual_seed(3)
    model = AutoModel.from_config(AutoConfig.for_model(arch, **args)).eval()
    with torch.no_grad():
        model.logit_scale.fill_(1.7)
        if arch == "siglip":
            model.logit_bias.fill_(-3.0)
    tok = byte_tokenizer(16)
    model.save_pretrained(str(tmp_path / "m"))
    tok.save_pretrained(str(tmp_path / "m"))
    from tests.teachers.test_teachers import _hf_processor

    _hf_processor(teachers.load_card("tiny-hf-siglip")).save_pretrained(str(tmp_path / "m"))
    card = teachers.load_card(tmp_path / "m")
    assert has_text_tower(card)
    tower = build_text_tower(card)
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=16, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(**enc).pooler_output
    assert torch.equal(tower(PROMPTS), ref)
    assert tower.logit_scale == pytest.approx(math.exp(1.7))
    assert tower.logit_bias == (pytest.approx(-3.0) if arch == "siglip" else None)
    again = load_text_tower(tower.save(tmp_path / "packed"))
    assert torch.equal(again(PROMPTS), ref)
    assert (again.logit_scale, again.logit_bias, again.embed_dim) == (tower.logit_scale, tower.logit_bias,
                                                                      tower.embed_dim)
    # the image teacher of the same folder embeds images in the same space
    assert teachers.build_teacher(card).summary_dim == tower.embed_dim


def test_random_cards_give_the_same_tower_every_time_and_families_without_text_say_so():
    a, b = build_text_tower("tiny-hf-siglip"), build_text_tower("tiny-hf-siglip")
    assert torch.equal(a(PROMPTS), b(PROMPTS))
    assert torch.equal(build_text_tower("tiny-clip")(PROMPTS), build_text_tower("tiny-clip")(PROMPTS))
    for name in ("tiny-dinov2", "tiny-sam", "tiny-hf-dinov2"):
        assert not has_text_tower(name)
        with pytest.raises(TextTowerUnavailable):
            build_text_tower(name)


def test_pack_text_tower_entries(tmp_path):
    """What the adapter pack records per teacher: a tower folder for a CLIP-family teacher (also when the teacher is
    named by a card path), why not for one it cannot pack, nothing for families without text."""
    from agglom.export.adapters import pack_text_tower
    from agglom.model import TeacherSpec

    card_path = tmp_path / "cards" / "my.clip.yaml"
    card_path.parent.mkdir()
    card_path.write_text(yaml.safe_dump(dict(yaml.safe_load((teachers.cards.CARDS_DIR / "tiny-clip.yaml").read_text()),
                                             name="my-clip")))
    digest = teachers.load_card(str(card_path)).digest()
    spec = lambda name, d: TeacherSpec(name=name, summary_dim=32, spatial_dim=64, grid=(8, 8), digest=d)  # noqa: E731
    info = pack_text_tower(spec(str(card_path), digest), tmp_path / "export")
    assert info["card_digest"] == digest and info["path"].startswith("text/") and "//" not in info["path"]
    assert (tmp_path / "export" / info["path"]).resolve().is_relative_to((tmp_path / "export").resolve())
    assert torch.equal(load_text_tower(tmp_path / "export" / info["path"])(PROMPTS),
                       build_text_tower(str(card_path))(PROMPTS))
    assert "changed since training" in pack_text_tower(spec(str(card_path), "0" * 64), tmp_path / "e2")["unavailable"]
    card_path.write_text(card_path.read_text().replace("summary: embed", "summary: mean"))
    assert "not the image-text embedding" in pack_text_tower(spec(str(card_path), ""), tmp_path / "e3")["unavailable"]
    assert pack_text_tower(spec("tiny-dinov2", ""), tmp_path / "e4") is None


# --------------------------------------------------------------------------- scoring and metrics by hand
def test_class_embeddings_ensemble_the_prompts():
    tower = build_text_tower("tiny-clip")
    got = class_embeddings(tower, {0: PROMPTS[:2], 1: PROMPTS[2:]})
    for k, prompts in enumerate((PROMPTS[:2], PROMPTS[2:])):
        e = torch.nn.functional.normalize(tower(prompts).double(), dim=-1).mean(0)
        torch.testing.assert_close(got[k], e / e.norm())


def test_zero_shot_metrics_against_a_hand_computed_case():
    """Eight images on the unit circle, classes along the axes, scale 10: P(class 1) = σ(10 (sin θ - cos θ)).
    Group A: positives at 60°, 100°, negatives at -20° and 80° (one pair out of order: AUC 3/4); group B separable
    (AUC 1). Overall 14 of 16 pairs in order (60° and 70° both below A's 80° negative). At the fixed 0.5 threshold
    (θ > 45°): TPR A = B = 1, FPR A = 1/2, FPR B = 0."""
    deg = np.array([60, 100, -20, 80, 70, 120, -40, 10], dtype=float)
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])
    groups = np.array(["A", "A", "A", "A", "B", "B", "B", "B"], dtype=object)
    emb = np.stack([np.cos(np.radians(deg)), np.sin(np.radians(deg))], 1) * 3.0  # norms do not matter
    classes = torch.eye(2, dtype=torch.float64)
    probs = zero_shot_probs(emb, classes, logit_scale=10.0, logit_bias=-5.0)  # a bias cancels in the softmax
    by_hand = 1 / (1 + np.exp(-10 * (np.sin(np.radians(deg)) - np.cos(np.radians(deg)))))
    np.testing.assert_allclose(probs[:, 1], by_hand, rtol=1e-12)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    yy, score, cols = label_scores(y, {None: probs}, {None: {0: ["n"], 1: ["p"]}})
    assert cols is None and np.array_equal(yy, y)

    class Ev:
        threshold_method, ece_binnings, bootstrap, optimistic_f1 = "youden", ["range10"], 50, False

    sec = zero_shot_section("teacher", "t", yy, score, yy, score, {"g": groups}, {"g": groups}, Ev(), seed=0)
    r = sec["attributes"]["g"]
    assert r["groups"]["A"]["auc"]["value"] == pytest.approx(3 / 4)
    assert r["groups"]["B"]["auc"]["value"] == pytest.approx(1.0)
    assert r["auc"]["value"] == pytest.approx(14 / 16)
    assert r["worst_group_auc"]["value"] == pytest.approx(3 / 4) and r["worst_group_auc"]["group"] == "A"
    assert r["auc_gap"]["value"] == pytest.approx(1 / 4)
    fixed = r["thresholds"]["fixed_0.5"]
    assert fixed["by_group"]["A"]["tpr"] == 1.0 and fixed["by_group"]["A"]["fpr"] == 0.5
    assert fixed["by_group"]["B"]["tpr"] == 1.0 and fixed["by_group"]["B"]["fpr"] == 0.0
    assert fixed["fpr_gap"]["value"] == pytest.approx(0.5) and fixed["eod_worst_case"]["value"] == pytest.approx(0.5)
    assert fixed["dpd"]["value"] == pytest.approx(3 / 4 - 2 / 4)  # selection rates A 3/4, B 2/4
    lo, hi = r["auc"]["ci"]
    assert lo <= r["auc"]["value"] <= hi
    assert set(sec["thresholds"]) == {"fixed_0.5", "val_youden"}


def test_prompt_parsing():
    assert parse_prompts({"0": "healthy", 1: ["sick", "ill"]}, False) == {None: {0: ["healthy"], 1: ["sick", "ill"]}}
    assert parse_prompts({"normal": ["a"], "effusion": ["b"]}, False, ["normal", "effusion"]) == \
        {None: {0: ["a"], 1: ["b"]}}
    multi = parse_prompts({"edema": {0: "no edema", "positive": "edema"}, "label1": {"0": "x", "1": "y"}}, True,
                          ["edema", "label1"], 2)
    assert multi == {0: {0: ["no edema"], 1: ["edema"]}, 1: {0: ["x"], 1: ["y"]}}
    with pytest.raises(PromptError, match="at least two"):
        parse_prompts({0: ["a"]}, False)
    with pytest.raises(PromptError, match="neither a label value nor a class name"):
        parse_prompts({"cat": ["a"], 1: ["b"]}, False, ["normal", "effusion"])
    with pytest.raises(PromptError, match="no prompts for label"):
        parse_prompts({"edema": {0: "a", 1: "b"}}, True, ["edema", "other"], 2)
    with pytest.raises(PromptError, match="without prompts"):
        label_scores(np.array([0, 1, 2]), {None: np.full((3, 2), 0.5)}, {None: {0: ["a"], 1: ["b"]}})


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def clip_run(tmp_path_factory, synth_root, make_tiny_args):
    """A short run distilling the tiny open_clip and transformers SigLIP teachers, with prompts in its recipe."""
    tiny_args = make_tiny_args

    out = tmp_path_factory.mktemp("zs")
    prompts = "{0: [a scan of a healthy organ, a normal organ], 1: [a scan of an organ with a lesion]}"
    args = tiny_args(out, synth_root, "zs", 4, **{"data.epoch_samples": 64, "eval.zero_shot_prompts": prompts,
                                                  "teachers": "[{name: tiny-clip}, {name: tiny-hf-siglip}, "
                                                              "{name: tiny-dinov2}]"})
    assert main(["train", *args]) == 0
    assert main(["export", str(out / "zs")]) == 0
    return out / "zs"


def _rows(path, model, split="test"):
    with open(path) as f:
        return [r for r in csv.DictReader(f) if r["model"] == model and r["split"] == split]


def test_eval_zero_shot_on_a_run_and_its_export(clip_run, synth_root, tmp_path, capsys):
    assert main(["eval", str(clip_run), "audit=true", "zero_shot=recipe", "eval.attributes=[site]",
                 *FAST_EVAL]) == 0
    ev = clip_run / "eval"
    report = json.loads((ev / "report.json").read_text())
    validate_report(report)
    zs = report["zero_shot"]
    assert set(zs["prompts"]) == {"0", "1"} and "softmax" in zs["scoring"]
    # the student through each CLIP-family teacher's adapter, each such teacher itself; not the DINOv2 teacher
    assert set(zs["models"]) == {"zs@tiny-clip", "zs@tiny-hf-siglip", "teacher:tiny-clip", "teacher:tiny-hf-siglip"}
    for name, m in zs["models"].items():
        site = m["attributes"]["site"]
        assert set(site["groups"]) == {"A", "B"} and site["auc"]["ci"] is not None
        assert m["via"] in name and set(m["thresholds"]) == {"fixed_0.5", "val_youden"}
        # every number can be recomputed from zero_shot_predictions.csv
        rows = _rows(ev / "zero_shot_predictions.csv", name)
        assert len(rows) == m["n_test"]
        auc = roc_auc_score([int(r["label"]) for r in rows], [float(r["score"]) for r in rows])
        assert auc == pytest.approx(site["auc"]["value"], abs=1e-9)
    assert zs["models"]["teacher:tiny-hf-siglip"]["logit_bias"] is not None
    assert "Zero-shot through the CLIP text tower" in (ev / "report.md").read_text()
    assert "zero-shot (through the CLIP text tower)" in capsys.readouterr().out
    assert {r["model"] for r in csv.DictReader(open(ev / "predictions.csv"))} == \
        {"zs", "teacher:tiny-clip", "teacher:tiny-hf-siglip", "teacher:tiny-dinov2"}  # probe models only

    # the export carries the text towers and the prompts: same zero-shot scores without the teachers' cards
    export = clip_run / "export"
    packed = json.loads((export / "adapters.json").read_text())
    assert set(packed["text_towers"]) == {"tiny-clip", "tiny-hf-siglip"}
    assert packed["zero_shot_prompts"]["1"] == ["a scan of an organ with a lesion"]
    prompts = tmp_path / "prompts.yaml"
    prompts.write_text(yaml.safe_dump(packed["zero_shot_prompts"]))
    out = tmp_path / "ev-export"
    assert main(["eval", str(export), f"data_root={synth_root}", f"zero_shot={prompts}", f"out={out}",
                 "eval.attributes=[site]", "eval.zero_shot_teachers=[tiny-clip]", *FAST_EVAL]) == 0
    exp = json.loads((out / "report.json").read_text())["zero_shot"]["models"]
    assert set(exp) == {"export@tiny-clip"}
    a = {r["key"]: float(r["score"]) for r in _rows(ev / "zero_shot_predictions.csv", "zs@tiny-clip")}
    b = {r["key"]: float(r["score"]) for r in _rows(out / "zero_shot_predictions.csv", "export@tiny-clip")}
    assert a.keys() == b.keys() and max(abs(a[k] - b[k]) for k in a) < 1e-5


def test_eval_zero_shot_errors_are_user_errors(clip_run, capsys):
    assert main(["eval", str(clip_run), "zero_shot=no-such-file.yaml", *FAST_EVAL]) == 2
    assert "prompts file not found" in capsys.readouterr().err
    assert main(["eval", str(clip_run), "zero_shot=recipe", "eval.zero_shot_teachers=[tiny-dinov2]",
                 *FAST_EVAL]) == 2
    assert "no usable text tower" in capsys.readouterr().err
