"""The student as SAM's image encoder: the export packs SAM's own prompt encoder + mask decoder (from the teacher's
checkpoint), the predictor loads from the folder alone, the teacher's own encoder in the student's place reproduces
segment-anything's SamPredictor exactly, and `eval.sam_prompts=true` reports per-group Dice through the real CLI."""
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file
from segment_anything import SamPredictor
from segment_anything.modeling import Sam

import teachers
from agglom.cli import main
from agglom.eval.report.schema import validate_report
from teachers.families.sam import build_prompt_decoder, decoder_args

FAST_EVAL = ["eval.bootstrap=20", "eval.label_fractions=[1.0]", "eval.seeds=1", "num_workers=0", "eval.fidelity=false"]
PROMPTS = [dict(box=np.array([4.0, 6.0, 20.0, 17.0]), multimask_output=False),
           dict(point_coords=np.array([[12.0, 9.0]]), point_labels=np.array([1]), multimask_output=True),
           dict(point_coords=np.array([[12.0, 9.0]]), point_labels=np.array([1]), box=np.array([4.0, 6.0, 20.0, 17.0]),
                multimask_output=False)]


def _reference_sam(ckpt: Path, card) -> Sam:
    """segment-anything's own Sam, loaded from the full checkpoint the card points at."""
    from segment_anything.modeling import ImageEncoderViT

    args = dict(card.model_args)
    args["global_attn_indexes"] = tuple(args["global_attn_indexes"])
    from functools import partial

    encoder = ImageEncoderViT(img_size=64, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), **args)
    prompt, decoder = build_prompt_decoder(decoder_args(card))
    sam = Sam(encoder, prompt, decoder, pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])
    sam.load_state_dict(teachers.load_state_dict(ckpt), strict=True)
    return sam.eval()


@pytest.fixture(scope="module")
def sam_run(tmp_path_factory, synth_root, make_tiny_args):
    """A full tiny SAM checkpoint (safetensors; its decoder drawn apart from the card's seeded init), a card pointing
    at it, a 4-step run distilled from it at 32 px (student grid 4x4, SAM's 8x8) and the run's export."""
    root = tmp_path_factory.mktemp("sam")
    base = teachers.load_card("tiny-sam")
    encoder = teachers.build_teacher(base).model
    torch.manual_seed(123)
    prompt, decoder = build_prompt_decoder(decoder_args(base))
    state = {f"image_encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"prompt_encoder.{k}": v for k, v in prompt.state_dict().items()})
    state.update({f"mask_decoder.{k}": v for k, v in decoder.state_dict().items()})
    ckpt = root / "tiny_sam_full.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(ckpt))
    card_yaml = yaml.safe_load((Path(teachers.__file__).parent / "cards" / "tiny-sam.yaml").read_text())
    card_yaml.update(name="ckpt-sam", weights={"source": "file", "path": str(ckpt)})
    card_path = root / "ckpt-sam.yaml"
    card_path.write_text(yaml.safe_dump(card_yaml))
    args = make_tiny_args(root / "runs", synth_root, "sam", 4, **{"data.epoch_samples": 64,
                                                                 "teachers": f"[{{name: {card_path}}}]"})
    assert main(["train", *args]) == 0
    run = root / "runs" / "sam"
    assert main(["export", str(run)]) == 0
    return {"run": run, "export": run / "export", "ckpt": ckpt, "card": card_path, "state": state}


def test_export_packs_the_checkpoints_decoder(sam_run):
    meta = json.loads((sam_run["export"] / "adapters.json").read_text())
    name = str(sam_run["card"])
    entry = meta["sam_decoders"][name]
    assert (sam_run["export"] / entry["path"] / "decoder.safetensors").is_file()
    assert entry["card_digest"] == teachers.load_card(name).digest()
    from agglom.export import load_sam_decoder

    prompt, decoder, info = load_sam_decoder(sam_run["export"])
    assert info["source"] == "checkpoint tiny_sam_full.safetensors" and info["decoder"]["embed_dim"] == 32
    for k, v in decoder.state_dict().items():  # the checkpoint's decoder, not the card's seeded init
        assert torch.equal(v, sam_run["state"][f"mask_decoder.{k}"]), k
    for k, v in prompt.state_dict().items():
        assert torch.equal(v, sam_run["state"][f"prompt_encoder.{k}"]), k


def test_the_teachers_own_encoder_in_place_reproduces_sam_predictor_exactly(sam_run):
    """The decoder path (packed decoder, SamPredictor semantics, the eval's decode) with the teacher's encoder where
    the student goes gives segment-anything's own SamPredictor's logits and masks bit for bit."""
    from agglom.eval.sam.run import decode
    from agglom.export import load_sam_decoder
    from agglom.export.sam_predictor import StudentSamPredictor

    card = teachers.load_card(str(sam_run["card"]))
    reference = SamPredictor(_reference_sam(sam_run["ckpt"], card))
    prompt, decoder, info = load_sam_decoder(sam_run["export"])
    teacher_encoder = teachers.build_teacher(card).model  # the teacher zoo's encoder, loaded from the checkpoint
    ours = StudentSamPredictor(Sam(teacher_encoder, prompt, decoder, info["pixel_mean"], info["pixel_std"]))
    image = (np.random.default_rng(0).random((24, 30, 3)) * 255).astype(np.uint8)
    reference.set_image(image)
    ours.set_image(image)
    assert torch.equal(reference.features, ours.features)
    for p in PROMPTS:
        ref = reference.predict(**p, return_logits=True)
        got = ours.predict(**p, return_logits=True)
        for a, b in zip(ref, got):
            assert np.array_equal(a, b)
        masks, scores, _ = reference.predict(**p)
        expect = masks[int(np.argmax(scores))] if len(masks) > 1 else masks[0]
        assert np.array_equal(decode(ours, reference.features, p, reference.input_size, (24, 30)), expect)


def test_student_predictor_from_the_export_folder_alone(sam_run, tmp_path):
    """Masks of the right shape from the export alone (card and checkpoint moved away), the same as the run's
    student in SAM's place gives in process."""
    from agglom.export import StudentSamPredictor
    from agglom.export.sam_pack import load_sam_decoder
    from agglom.export.sam_predictor import assemble_student_sam
    from agglom.runs import load_run_model

    image = (np.random.default_rng(1).random((40, 28)) * 255).astype(np.uint8)  # grayscale, portrait
    prompt, decoder, info = load_sam_decoder(sam_run["export"])
    in_process = StudentSamPredictor(assemble_student_sam(load_run_model(sam_run["run"]), str(sam_run["card"]), prompt,
                                                          decoder, info["pixel_mean"], info["pixel_std"]))
    in_process.set_image(image)
    expected = [in_process.predict(**p) for p in PROMPTS]
    export = tmp_path / "moved_export"
    shutil.copytree(sam_run["export"], export)
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    for f in (sam_run["card"], sam_run["ckpt"]):
        f.rename(hidden / f.name)
    try:
        predictor = StudentSamPredictor.from_export(export)
        predictor.set_image(image)
        assert tuple(predictor.features.shape) == (1, 32, 8, 8)  # SAM's neck: 32 channels on its 8x8 grid
        assert predictor.input_size == (64, 45) and predictor.original_size == (40, 28)
        for p, (m0, s0, _) in zip(PROMPTS, expected):
            masks, scores, low = predictor.predict(**p)
            assert masks.shape == ((3 if p["multimask_output"] else 1), 40, 28) and masks.dtype == bool
            assert low.shape == (masks.shape[0], 32, 32)
            assert np.array_equal(masks, m0) and np.allclose(scores, s0, atol=1e-6)
    finally:
        for f in (sam_run["card"], sam_run["ckpt"]):
            (hidden / f.name).rename(f)


def test_eval_sam_prompts_reports_per_group_dice_through_the_cli(sam_run, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["eval", str(sam_run["run"]), f"out={out}", "eval.sam_prompts=true", "eval.sam_prompt=box+point",
                 *FAST_EVAL]) == 0
    report = json.loads((out / "report.json").read_text())
    validate_report(report)
    sec = report["sam_prompts"]
    name = str(sam_run["card"])
    t = sec["teachers"][name]
    assert sec["prompt"] == "box+point" and sec["mask_size"] == [32, 32]
    assert t["embedding"] == [32, 8, 8] and t["adapter_grid"] == [8, 8] and t["decoder"].startswith("checkpoint")
    assert set(t["models"]) == {"sam", f"teacher:{name}"}
    with open(out / "sam_predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == t["n"] == sec["samples"] - sec["without_foreground"] > 0
    site = np.array([r["site"] for r in rows])
    for col, res in (("dice_teacher", t["models"][f"teacher:{name}"]), ("dice_student", t["models"]["sam"]),
                     ("agreement", t["agreement"])):
        d = np.array([float(r[col]) for r in rows])
        r = res["attributes"]["site"]
        assert d.mean() == pytest.approx(r["dice"]["value"], abs=1e-12)
        for g in r["group_names"]:
            assert d[site == g].mean() == pytest.approx(r["groups"][g]["dice"]["value"], abs=1e-12)
            lo, hi = r["groups"][g]["dice"]["ci"]
            assert lo <= r["groups"][g]["dice"]["value"] <= hi
    assert "The student as SAM's image encoder" in (out / "report.md").read_text()
    assert "SAM decoder" in capsys.readouterr().out
    plot = out / f"sam_dice_{Path(name).name}_site.png"
    assert plot.is_file() and plot.stat().st_size > 1000  # the per-group prompted Dice figure


def test_eval_sam_prompts_refuses_before_any_work(synth_root, tmp_path, capsys):
    assert main(["eval", "teacher=tiny-sam", f"data_root={synth_root}", "eval.sam_prompts=true",
                 f"out={tmp_path / 'ev'}", "num_workers=0"]) == 2
    assert "eval.sam_prompts=true: needs run=" in capsys.readouterr().err
    assert not (tmp_path / "ev").exists()


def test_a_pooled_adapter_grid_and_a_grayscale_student_still_give_sams_embedding():
    """An adapter on a coarser grid than SAM's (a pooled feature cache: 4x4 for SAM's 8x8) is de-normalised and
    resized bilinearly to SAM's grid; a one-channel student gets SAM's input back as luma, at its own size and
    normalisation."""
    import torch.nn.functional as F
    from omegaconf import OmegaConf

    from agglom.config.schema import Recipe
    from agglom.export.sam_predictor import StudentSamPredictor, assemble_student_sam, student_sam_embedding
    from agglom.model import AgglomModel, TeacherSpec

    cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {
        "data": {"image_size": 32, "grayscale": "keep"},
        "student": {"model": "vit_small_patch16_224", "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 1,
                                                                     "num_heads": 2}, "mean": [0.4], "std": [0.3]}})
    torch.manual_seed(0)
    model = AgglomModel(cfg, [TeacherSpec("tiny-sam", 32, 32, (4, 4))], in_chans=1).eval()
    norm = model.spatial_norms["tiny-sam"]
    norm.fit(torch.randn(64, 32) * 3 + 1)  # a normaliser that is not the identity
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        emb = student_sam_embedding(model, "tiny-sam", x, (8, 8))
        raw = model(x)["tiny-sam"]["spatial"]
        own = norm.inverse(raw.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(raw.shape)
    assert emb.shape == (2, 32, 8, 8)
    assert torch.allclose(emb, F.interpolate(own, size=(8, 8), mode="bilinear", align_corners=False), atol=1e-5)

    card = teachers.load_card("tiny-sam")
    prompt, decoder = build_prompt_decoder(decoder_args(card))
    sam = assemble_student_sam(model, "tiny-sam", prompt, decoder, [123.675, 116.28, 103.53], [58.395, 57.12, 57.375])
    gray = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)
    sam_input = sam.preprocess(torch.as_tensor(np.repeat(gray[..., None], 3, -1)).permute(2, 0, 1)[None].float())
    student_input = sam.image_encoder.to_student(sam_input)
    expect = F.interpolate(torch.as_tensor(gray, dtype=torch.float32)[None, None] / 255.0, size=(32, 32),
                           mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(student_input, (expect - 0.4) / 0.3, atol=1e-4)
    predictor = StudentSamPredictor(sam)
    predictor.set_image(gray)
    masks, _, _ = predictor.predict(box=np.array([8.0, 8.0, 40.0, 30.0]), multimask_output=False)
    assert predictor.features.shape == (1, 32, 8, 8) and masks.shape == (1, 64, 64)
