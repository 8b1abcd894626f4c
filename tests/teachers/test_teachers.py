"""The teacher zoo: tiny real architectures (open_clip, timm, SAM, transformers, agglom exports) with random weights,
their contracts, preprocessing, each family's checkpoint round trip through its own library, refusal of unsafe
pickles, card validation and the `agglom teachers` CLI."""
from __future__ import annotations

import copy
import os
import pickle
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

import teachers
from teachers import (
    CardError,
    MissingWeightsError,
    TeacherOutput,
    UnsafeCheckpointError,
    build_teacher,
    card_from_dict,
    describe_teacher,
    list_cards,
    load_card,
)

HF_TINY = ["tiny-hf-dinov2", "tiny-hf-siglip", "tiny-hf-dinov3"]  # the transformers family
TINY = ["tiny-clip", "tiny-dinov2", "tiny-sam"] + HF_TINY
EXPECTED = {  # summary_dim, spatial_dim, grid, patch
    "tiny-clip": (32, 64, (8, 8), (8, 8)),
    "tiny-dinov2": (48, 48, (4, 4), (14, 14)),
    "tiny-sam": (32, 32, (8, 8), (8, 8)),
    "tiny-hf-dinov2": (48, 48, (4, 4), (14, 14)),
    "tiny-hf-siglip": (48, 48, (8, 8), (8, 8)),
    "tiny-hf-dinov3": (48, 48, (4, 4), (16, 16)),
    "agglom-export": (40, 40, (4, 4), (8, 8)),
}
STUDENT_MEAN, STUDENT_STD = [0.5], [0.25]
EXPORT_MEAN, EXPORT_STD = (0.3, 0.4, 0.5), (0.2, 0.25, 0.3)


def tiny_card_dict(name: str) -> dict:
    return yaml.safe_load((teachers.cards.CARDS_DIR / f"{name}.yaml").read_text())


def student_batch(raw01: torch.Tensor, mean=STUDENT_MEAN, std=STUDENT_STD) -> torch.Tensor:
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return (raw01 - m) / s


def make_timm_student(seed: int = 7):
    import timm

    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=40, depth=2, num_heads=2, reg_tokens=2, dynamic_img_size=True)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                              pretrained_cfg_overlay=dict(input_size=(3, 32, 32), mean=EXPORT_MEAN, std=EXPORT_STD,
                                                          interpolation="bilinear"), **args)
    return model.eval(), args


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    """An agglom export folder as `agglom export` writes it: timm save_for_hf (safetensors) + card.yaml."""
    import timm.models

    d = tmp_path_factory.mktemp("export") / "fair-vit"
    model, args = make_timm_student()
    timm.models.save_for_hf(model, str(d), model_args=args, safe_serialization=True)
    (d / "card.yaml").write_text(yaml.safe_dump({"licence": "CC-BY-4.0", "provenance": "synthetic benchmark",
                                                 "known_bias": "none measured"}))
    return d


def card_for(name: str, export_dir: Path):
    return load_card(export_dir) if name == "agglom-export" else load_card(name)


# --------------------------------------------------------------------------- contract of every tiny teacher
@pytest.mark.parametrize("name", TINY + ["agglom-export"])
def test_tiny_teacher_contract(name, export_dir):
    card = card_for(name, export_dir)
    t = build_teacher(card, STUDENT_MEAN, STUDENT_STD)
    ds, cs, grid, patch = EXPECTED[name]
    assert (t.summary_dim, t.spatial_dim, t.grid, t.patch_size) == (ds, cs, grid, patch)
    assert t.input_size == tuple(card.input_size) and t.dtype == torch.float32
    x = student_batch(torch.rand(3, 1, 50, 44, generator=torch.Generator().manual_seed(0)))
    out = t(x)
    assert isinstance(out, TeacherOutput)
    assert out.summary.shape == (3, ds) and out.spatial.shape == (3, cs, *grid)
    assert out.summary.dtype == torch.float32 and out.spatial.dtype == torch.float32
    assert torch.isfinite(out.summary).all() and torch.isfinite(out.spatial).all()
    assert not any(p.requires_grad for p in t.parameters())
    # frozen: .train() and requires_grad_() do not unfreeze it
    t.train()
    t.requires_grad_(True)
    assert not any(m.training for m in t.modules()) and not any(p.requires_grad for p in t.parameters())
    out2 = t(x)
    assert torch.equal(out.summary, out2.summary) and torch.equal(out.spatial, out2.spatial)
    # targets are ordinary tensors: a loss against them backpropagates into the student side
    pred = torch.zeros_like(out.summary, requires_grad=True)
    F.mse_loss(pred, out.summary).backward()
    assert pred.grad is not None
    # determinism: the same card builds the same teacher
    out3 = build_teacher(card_for(name, export_dir), STUDENT_MEAN, STUDENT_STD)(x)
    assert torch.equal(out.summary, out3.summary) and torch.equal(out.spatial, out3.spatial)
    # a batch cap (Teacher.max_batch) runs the batch in chunks, with the same outputs (to GEMM rounding)
    t.max_batch = 2
    out4 = t(x)
    assert torch.allclose(out.summary, out4.summary, atol=1e-5) and torch.allclose(out.spatial, out4.spatial, atol=1e-5)
    # 3-channel student input works as well
    x3 = student_batch(torch.rand(2, 3, 40, 40), mean=[0.5, 0.4, 0.3], std=[0.2, 0.2, 0.2])
    t3 = build_teacher(card, [0.5, 0.4, 0.3], [0.2, 0.2, 0.2])
    assert t3(x3).spatial.shape == (2, cs, *grid)


def test_tiny_cards_differ_by_seed():
    d = tiny_card_dict("tiny-dinov2")
    a = build_teacher(card_from_dict(d))
    b = build_teacher(card_from_dict(dict(d, seed=d["seed"] + 1)))
    x = torch.randn(1, 1, 56, 56)
    assert not torch.allclose(a(x).summary, b(x).summary)
    assert card_from_dict(d).digest() != card_from_dict(dict(d, seed=d["seed"] + 1)).digest()
    assert card_from_dict(d).digest() == load_card("tiny-dinov2").digest()
    assert card_from_dict(dict(d, licence="other")).digest() == load_card("tiny-dinov2").digest()


# --------------------------------------------------------------------------- preprocessing
def reference(t, raw01: torch.Tensor):
    """The teacher's own preprocessing on the raw [0,1] image, fed to the underlying library module."""
    from segment_anything.utils.transforms import ResizeLongestSide

    if raw01.shape[1] == 1:
        raw01 = raw01.repeat(1, 3, 1, 1)
    name = t.card.name
    mean = torch.tensor(t.card.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(t.card.norm_std).view(1, 3, 1, 1)
    with torch.no_grad():
        if name == "tiny-sam":  # segment-anything: long side -> img_size, pixel mean/std in 0-255, pad bottom/right
            enc = t.model
            h, w = ResizeLongestSide.get_preprocess_shape(raw01.shape[-2], raw01.shape[-1], enc.img_size)
            img = F.interpolate(raw01 * 255.0, (h, w), mode="bilinear", align_corners=False, antialias=True)
            pm = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
            ps = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
            img = F.pad((img - pm) / ps, (0, enc.img_size - w, 0, enc.img_size - h))
            neck = enc(img)
            return neck.mean((2, 3)), neck
        img = F.interpolate(raw01, t.input_size, mode=t.interpolation, align_corners=False, antialias=True)
        img = (img - mean) / std
        if t.family == "transformers":  # the model's own forward (two-tower: its get_image_features)
            return hf_reference(t, img)
        if name == "tiny-clip":
            t.model.output_tokens = True
            try:
                pooled, tokens = t.model(img)  # open_clip's own forward: projected embedding + patch tokens
            finally:
                t.model.output_tokens = False
            b, n, c = tokens.shape
            return pooled, tokens.transpose(1, 2).reshape(b, c, *t.grid)
        feats = t.model.forward_features(img)  # timm
        patches = feats[:, t.model.num_prefix_tokens:]
        b, n, c = patches.shape
        return feats[:, 0], patches.transpose(1, 2).reshape(b, c, *t.grid)


def hf_reference(t, img: torch.Tensor):
    """(summary, spatial) from a transformers model's own outputs: CLS (+ registers) dropped from the tokens; the
    summary is the CLS token, or the pooler output (two-tower: the image-text embedding)."""
    cfg = t.model.full.config.vision_config if t.card.summary == "embed" else t.model.config
    out = t.model(pixel_values=img)
    tokens = out.last_hidden_state
    prefix = (0 if cfg.model_type.startswith("siglip") else 1) + int(getattr(cfg, "num_register_tokens", 0) or 0)
    patches = tokens[:, prefix:]
    b, n, c = patches.shape
    summary = out.pooler_output if t.card.summary == "embed" else tokens[:, 0]
    return summary, patches.transpose(1, 2).reshape(b, c, *t.grid)


@pytest.mark.parametrize("name", TINY + ["agglom-export"])
@pytest.mark.parametrize("shape", [(2, 1, 72, 60), (2, 3, 30, 45)])
def test_student_normalised_equals_own_preprocessing(name, shape, export_dir):
    card = card_for(name, export_dir)
    raw = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    mean, std = (STUDENT_MEAN, STUDENT_STD) if shape[1] == 1 else ([0.45, 0.5, 0.55], [0.2, 0.3, 0.25])
    t = build_teacher(card, mean, std)
    out = t(student_batch(raw, mean, std))
    ref_summary, ref_spatial = reference(t, raw)
    torch.testing.assert_close(out.summary, ref_summary, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.spatial, ref_spatial, atol=2e-4, rtol=1e-4)


def test_longest_side_pads_bottom_right():
    t = build_teacher("tiny-sam", [0.0], [1.0])
    x = torch.ones(1, 1, 32, 16)  # portrait: resized to 64x32, padded on the right
    y = t.preprocess(x)
    assert y.shape == (1, 3, 64, 64)
    assert torch.count_nonzero(y[..., :, 32:]) == 0 and torch.count_nonzero(y[..., :, :32]) > 0


# --------------------------------------------------------------------------- checkpoint round trips
def _with_weights(name: str, source: str, path: Path, **extra) -> teachers.TeacherCard:
    d = tiny_card_dict(name)
    d.update(extra)
    d["weights"] = {"source": source, "path": str(path)}
    return card_from_dict(d)


def test_open_clip_roundtrip_through_open_clip(tmp_path):
    import open_clip

    build_teacher("tiny-clip")  # registers the card's config with open_clip
    assert "agglom-tiny-clip" in open_clip.list_models()
    torch.manual_seed(123)
    clip = open_clip.create_model("agglom-tiny-clip").eval()  # the full CLIP (both towers), open_clip's init
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    t = build_teacher(_with_weights("tiny-clip", "file", tmp_path / "clip.pt"), [0.0], [1.0])
    img = torch.rand(2, 3, 64, 64)
    mean = torch.tensor(t.card.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(t.card.norm_std).view(1, 3, 1, 1)
    with torch.no_grad():
        embed = clip.encode_image((img - mean) / std)
    out = t(img)
    torch.testing.assert_close(out.summary, embed, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.summary, build_teacher("tiny-clip", [0.0], [1.0])(img).summary)


def test_timm_file_and_agglom_folder_roundtrip(tmp_path, export_dir):
    import timm
    from safetensors.torch import save_file

    # a timm safetensors file -> timm family
    torch.manual_seed(11)
    d = tiny_card_dict("tiny-dinov2")
    model = timm.create_model(d["model"], pretrained=False, num_classes=0, img_size=56, **d["model_args"]).eval()
    save_file(model.state_dict(), str(tmp_path / "dino.safetensors"))
    t = build_teacher(_with_weights("tiny-dinov2", "file", tmp_path / "dino.safetensors"), [0.0], [1.0])
    img = torch.rand(2, 3, 56, 56)
    mean = torch.tensor(t.card.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(t.card.norm_std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.forward_features((img - mean) / std)
    out = t(img)
    torch.testing.assert_close(out.summary, feats[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.spatial.flatten(2).transpose(1, 2), feats[:, 5:], atol=1e-5, rtol=1e-5)

    # an export folder (timm save_for_hf, safetensors) -> agglom family, preprocessing from its pretrained_cfg
    card = load_card(export_dir)
    assert card.family == "agglom" and card.input_size == (32, 32)
    assert card.mean == EXPORT_MEAN and card.std == EXPORT_STD and card.interpolation == "bilinear"
    assert card.licence == "CC-BY-4.0" and card.provenance == "synthetic benchmark"  # from the folder's card.yaml
    student, _ = make_timm_student()
    t = build_teacher(card, [0.0], [1.0])
    img = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feats = student.forward_features((img - torch.tensor(EXPORT_MEAN).view(1, 3, 1, 1))
                                         / torch.tensor(EXPORT_STD).view(1, 3, 1, 1))
    out = t(img)
    torch.testing.assert_close(out.summary, feats[:, 0], atol=1e-5, rtol=1e-5)  # first prefix token (CLS)
    torch.testing.assert_close(out.spatial.flatten(2).transpose(1, 2), feats[:, 3:], atol=1e-5, rtol=1e-5)
    # the folder still loads with timm alone
    again = timm.create_model(f"local-dir:{export_dir}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again.forward_features(img), student.forward_features(img))
    # a card.yaml may choose the mean summary
    mean_card = card_from_dict(dict(card.to_dict(), summary="mean", name="fair-vit-mean"))
    assert torch.allclose(build_teacher(mean_card, [0.0], [1.0])(img).summary, out.spatial.mean((2, 3)), atol=1e-5)


@pytest.mark.parametrize("layout", ["full-sam-pth", "encoder-safetensors"])
def test_sam_roundtrip(tmp_path, layout):
    from safetensors.torch import save_file

    ref = build_teacher(card_from_dict(dict(tiny_card_dict("tiny-sam"), seed=99)), [0.0], [1.0])
    enc_sd = {k: v.clone() for k, v in ref.model.state_dict().items()}
    if layout == "full-sam-pth":
        sd = {f"image_encoder.{k}": v for k, v in enc_sd.items()}
        sd["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 128)
        sd["mask_decoder.iou_token.weight"] = torch.randn(1, 256)
        path = tmp_path / "sam_tiny.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "encoder.safetensors"
        save_file(enc_sd, str(path))
    t = build_teacher(_with_weights("tiny-sam", "file", path), [0.0], [1.0])
    x = torch.rand(2, 3, 64, 64)
    a, b = t(x), ref(x)
    assert torch.equal(a.spatial, b.spatial) and torch.equal(a.summary, b.summary)
    assert not torch.equal(a.spatial, build_teacher("tiny-sam", [0.0], [1.0])(x).spatial)


def test_sam_vit_b_registry_checkpoint(tmp_path, monkeypatch):
    """The real ViT-B layout through sam_model_registry: a full SAM checkpoint placed under $AGGLOM_WEIGHTS
    (no forward at 1024 px: ≈ 3 s on 2 cores, most of it writing the 360 MB file)."""
    from segment_anything import sam_model_registry

    torch.manual_seed(5)
    sam = sam_model_registry["vit_b"](checkpoint=None)
    torch.save(sam.state_dict(), tmp_path / "sam_vit_b_01ec64.pth")
    monkeypatch.setenv("AGGLOM_WEIGHTS", str(tmp_path))
    t = build_teacher("sam-vit-b")
    assert (t.summary_dim, t.spatial_dim, t.grid) == (256, 256, (64, 64))
    got = t.model.state_dict()
    for k, v in sam.image_encoder.state_dict().items():
        assert torch.equal(got[k], v), k
    (tmp_path / "sam_vit_b_01ec64.pth").unlink()


def _hf_processor(card: teachers.TeacherCard):
    """The image processor a model of this card ships with, at the card's size and statistics."""
    import transformers

    size, mean, std = card.input_size[0], list(card.mean), list(card.std)
    if card.model == "dinov2":  # RAD-DINO's: shortest edge + centre crop, bicubic
        return transformers.BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                              image_mean=mean, image_std=std, resample=3)
    cls = {"siglip": transformers.SiglipImageProcessor, "dinov3_vit": transformers.DINOv3ViTImageProcessor}[card.model]
    return cls(size={"height": size, "width": size}, image_mean=mean, image_std=std, resample=2)


def _hf_folder(name: str, path: Path, seed: int = 77):
    """A `save_pretrained` folder (model + image processor) of the card's architecture, other random weights."""
    from transformers import AutoConfig, AutoModel

    card = load_card(name)
    torch.manual_seed(seed)
    model = AutoModel.from_config(AutoConfig.for_model(card.model, **card.model_args)).eval()
    model.save_pretrained(str(path))
    _hf_processor(card).save_pretrained(str(path))
    return model


@pytest.mark.parametrize("name", HF_TINY)
def test_transformers_roundtrip_through_save_pretrained(tmp_path, name):
    """save_pretrained -> load_card(folder) -> teacher: the card's preprocessing comes from the folder's own image
    processor, and the teacher's outputs are the model's own on the processor's pixel values."""
    import numpy as np

    model = _hf_folder(name, tmp_path / "saved")
    ref_card = load_card(name)
    card = load_card(tmp_path / "saved")
    assert card.family == "transformers" and card.weights.source == "folder"
    assert card.input_size == ref_card.input_size and card.interpolation == ref_card.interpolation
    assert card.mean == pytest.approx(ref_card.mean) and card.std == pytest.approx(ref_card.std)
    t = build_teacher(card, [0.0], [1.0])
    assert (t.summary_dim, t.spatial_dim, t.grid) == EXPECTED[name][:3]
    size = card.input_size[0]
    pixels = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    inputs = _hf_processor(ref_card)(images=list(pixels), return_tensors="pt")
    with torch.no_grad():
        out = model.get_image_features(**inputs) if t.two_tower else model(**inputs)
    tokens = out.last_hidden_state
    ours = t(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0)
    summary = out.pooler_output if t.two_tower else tokens[:, 0]
    torch.testing.assert_close(ours.summary, summary, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours.spatial.flatten(2).transpose(1, 2), tokens[:, t.num_prefix_tokens:],
                               atol=1e-4, rtol=1e-4)
    # the weights were loaded (not the card's seeded init), and the folder is the same teacher wherever it lies
    assert not torch.allclose(ours.summary, build_teacher(name, [0.0], [1.0])(
        torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0).summary)
    import shutil

    shutil.copytree(tmp_path / "saved", tmp_path / "elsewhere")
    assert load_card(tmp_path / "elsewhere").digest() == card.digest()


def test_transformers_folder_card_yaml_and_processor_check(tmp_path):
    """A card.yaml beside a save_pretrained folder adds documentation; a mean/std that contradicts the model's own
    image processor is refused, naming the field and both values; other departures are shown, not refused."""
    _hf_folder("tiny-hf-dinov2", tmp_path / "rd")
    (tmp_path / "rd" / "card.yaml").write_text(yaml.safe_dump({"licence": "MIT", "provenance": "CXR",
                                                               "interpolation": "bilinear"}))
    card = load_card(tmp_path / "rd")
    assert card.licence == "MIT" and card.provenance == "CXR" and card.name == "rd"
    info = describe_teacher(card)
    assert info["differs_from_processor"] == {"interpolation": {"card": "bilinear", "processor": "bicubic"}}
    (tmp_path / "rd" / "card.yaml").write_text(yaml.safe_dump({"mean": [0.5, 0.5, 0.5]}))
    with pytest.raises(CardError, match=r"'mean'.*0\.5307"):
        build_teacher(load_card(tmp_path / "rd"))
    (tmp_path / "rd" / "card.yaml").unlink()
    (tmp_path / "rd" / "preprocessor_config.json").unlink()
    with pytest.raises(CardError, match="preprocessor_config.json"):
        load_card(tmp_path / "rd")


def test_processor_contract_rules():
    from teachers.hf_processor import processor_contract

    c = processor_contract({"do_resize": True, "size": {"shortest_edge": 256}, "do_center_crop": True,
                            "crop_size": {"height": 224, "width": 224}, "image_mean": [0.1, 0.2, 0.3],
                            "image_std": [0.4, 0.5, 0.6], "resample": 3})
    assert c["input_size"] == [224, 224] and c["interpolation"] == "bicubic" and c["mean"] == [0.1, 0.2, 0.3]
    assert any("centre-crops 224x224 from a 256x256" in n for n in c["notes"])
    c = processor_contract({"size": {"height": 448, "width": 448}, "resample": 2, "do_normalize": False})
    assert (c["input_size"], c["interpolation"], c["mean"], c["std"]) == ([448, 448], "bilinear", [0.0] * 3, [1.0] * 3)
    assert processor_contract({"size": {"height": 8, "width": 8}, "resample": 1})["notes"]  # lanczos: reported


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to fail fast")
@pytest.mark.parametrize("name", ["rad-dino", "medsiglip-448", "dinov3-vits16"])
def test_hub_card_offline_says_what_to_do(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    card = load_card(name)
    with pytest.raises(teachers.WeightsUnavailableError) as e:
        build_teacher(card)
    msg = str(e.value)
    assert "offline" in msg and f"hf download {card.model}" in msg and "source: folder" in msg


@pytest.mark.parametrize("change,field_named", [
    ({"weights": {"source": "file", "path": "x.safetensors"}}, "weights.source"),
    ({"weights": {"source": "tag", "tag": "main"}, "model": "microsoft/rad-dino"}, "model_args"),
])
def test_transformers_card_validation(change, field_named):
    d = dict(tiny_card_dict("tiny-hf-dinov2"), **change)
    with pytest.raises(CardError, match=f"'{field_named}'"):
        card_from_dict(d, source="bad.yaml")


def test_transformers_build_errors_name_the_problem():
    with pytest.raises(CardError, match="'model'.*model_type"):
        build_teacher(card_from_dict(dict(tiny_card_dict("tiny-hf-dinov2"), model="no_such_arch")))
    with pytest.raises(CardError, match="dinov2 has none: use cls, pooled or mean"):  # not an echo of 'embed'
        build_teacher(card_from_dict(dict(tiny_card_dict("tiny-hf-dinov2"), summary="embed")))
    with pytest.raises(CardError, match="needs a CLS token, but siglip_vision_model has none"):
        build_teacher(card_from_dict(dict(tiny_card_dict("tiny-hf-siglip"), summary="cls")))
    t = build_teacher(card_from_dict(dict(tiny_card_dict("tiny-hf-siglip"), summary="mean")), [0.0], [1.0])
    x = torch.rand(2, 3, 64, 64)
    out = t(x)
    torch.testing.assert_close(out.summary, out.spatial.mean((2, 3)))


def test_transformers_interpolates_positions_at_another_size():
    """A card may fix another input size than the config's: the model interpolates its position embeddings."""
    d = dict(tiny_card_dict("tiny-hf-siglip"), input_size=96)
    t = build_teacher(card_from_dict(d), [0.0], [1.0])
    assert t.forward_kwargs == {"interpolate_pos_encoding": True} and t.grid == (12, 12)
    assert t(torch.rand(1, 3, 96, 96)).spatial.shape == (1, 48, 12, 12)


# --------------------------------------------------------------------------- safe loading
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": _Payload(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(UnsafeCheckpointError, match="refused"):
        teachers.load_state_dict(path)
    with pytest.raises(UnsafeCheckpointError):
        build_teacher(_with_weights("tiny-sam", "file", path))
    assert not marker.exists()


def test_containers_are_unwrapped(tmp_path):
    sd = {"a.weight": torch.ones(2)}
    torch.save({"epoch": 3, "model": {f"module.{k}": v for k, v in sd.items()}}, tmp_path / "c.pt")
    got = teachers.load_state_dict(tmp_path / "c.pt")
    assert list(got) == ["a.weight"] and torch.equal(got["a.weight"], sd["a.weight"])


# --------------------------------------------------------------------------- cards
def test_real_cards_and_their_contracts():
    names = list_cards()
    for n in ["clip-vit-b16", "dinov2-vits14", "dinov2-vitb14-reg", "sam-vit-b", "biomedclip", "medsam", "rad-dino",
              "medsiglip-448", "dinov3-vits16", *TINY]:
        assert n in names
    rad = load_card("rad-dino")
    assert (rad.family, rad.model, rad.input_size, rad.interpolation) == ("transformers", "microsoft/rad-dino",
                                                                         (518, 518), "bicubic")
    assert rad.mean == (0.5307,) * 3 and rad.std == (0.2583,) * 3 and "MIMIC-CXR" in rad.provenance
    assert "MIT" in rad.licence and "clinical" in rad.licence
    sig = load_card("medsiglip-448")
    assert (sig.model, sig.input_size, sig.summary) == ("google/medsiglip-448", (448, 448), "embed")
    assert "Health AI Developer Foundations" in sig.licence and "chest X-rays" in sig.provenance
    assert "DINOv3 License" in load_card("dinov3-vits16").licence
    clip = load_card("clip-vit-b16")
    assert clip.licence == "MIT" and clip.input_size == (224, 224)
    assert clip.mean == (0.48145466, 0.4578275, 0.40821073) and clip.std == (0.26862954, 0.26130258, 0.27577711)
    sam = load_card("sam-vit-b")
    assert sam.resize == "longest" and sam.licence == "Apache-2.0"
    assert sam.norm_mean == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)
    assert "1.57" in load_card("medsam").provenance or "1,570,263" in load_card("medsam").provenance
    assert "PMC-15M" in load_card("biomedclip").provenance
    # contracts without weights (the architecture is built on the meta device)
    assert describe_teacher("clip-vit-b16")["summary_dim"] == 512
    info = describe_teacher("clip-vit-b16")
    assert (info["spatial_dim"], info["grid"]) == (768, [14, 14])
    info = describe_teacher("dinov2-vitb14-reg")
    assert (info["summary_dim"], info["spatial_dim"], info["grid"], info["patch_size"]) == (768, 768, [16, 16],
                                                                                            [14, 14])
    assert describe_teacher("dinov2-vits14")["spatial_dim"] == 384
    info = describe_teacher("medsam")
    assert (info["spatial_dim"], info["grid"], info["input_size"]) == (256, [64, 64], [1024, 1024])


@pytest.mark.parametrize("name,fname", [("sam-vit-b", "sam_vit_b_01ec64.pth"), ("medsam", "medsam_vit_b.pth")])
def test_missing_weights_say_what_to_place_where(tmp_path, monkeypatch, name, fname):
    monkeypatch.setenv("AGGLOM_WEIGHTS", str(tmp_path / "w"))
    card = load_card(name)
    assert card.weights_present() is False
    with pytest.raises(MissingWeightsError) as e:
        build_teacher(card)
    assert str(tmp_path / "w" / fname) in str(e.value) and "AGGLOM_WEIGHTS" in str(e.value)
    assert "http" in str(e.value)  # where to get it


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="needs HF_HUB_OFFLINE=1 to fail fast")
def test_published_tag_offline_fails_clearly():
    with pytest.raises(teachers.WeightsUnavailableError, match="offline"):
        build_teacher("clip-vit-b16")


@pytest.mark.parametrize("change,field_named", [
    ({"colour": 1}, "colour"),
    ({"family": "clip"}, "family"),
    ({"resize": "crop"}, "resize"),
    ({"input_size": [64]}, "input_size"),
    ({"std": [0.0, 1.0, 1.0]}, "std"),
    ({"weights": {"source": "url"}}, "weights.source"),
    ({"weights": {"source": "file"}}, "weights.path"),
    ({"weights": {"source": "none", "sha": "x"}}, "weights.sha"),
    ({"summary": "cls"}, "summary"),  # SAM has no CLS token
    ({"model": "vit_q"}, "model"),
    ({"model_args": {"depthh": 2}}, "model_args.depthh"),
])
def test_card_validation_names_the_field(change, field_named):
    d = tiny_card_dict("tiny-sam")
    d.update(change)
    with pytest.raises(CardError) as e:
        card_from_dict(d, source="bad.yaml")
    msg = str(e.value)
    assert f"'{field_named}'" in msg, msg
    if "colour" in change:
        assert "valid fields" in msg and "input_size" in msg
    if "family" in change:
        assert "valid families" in msg
        assert all(f in msg for f in ("open_clip", "timm", "sam", "agglom"))


def test_missing_field_and_unknown_card(tmp_path):
    d = tiny_card_dict("tiny-clip")
    del d["input_size"]
    with pytest.raises(CardError, match="'input_size'"):
        card_from_dict(d)
    with pytest.raises(CardError, match="tiny-clip"):
        load_card("tiny-clpi")
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(dict(tiny_card_dict("tiny-clip"), name="mine")))
    assert load_card(str(p)).name == "mine"


def test_digest_tracks_weights_identity(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "enc.safetensors"
    ref = build_teacher("tiny-sam")
    save_file({k: v.clone() for k, v in ref.model.state_dict().items()}, str(path))
    card = _with_weights("tiny-sam", "file", path)
    d1 = card.digest()
    assert d1 == copy.deepcopy(card).digest() and re.fullmatch(r"[0-9a-f]{64}", d1)
    save_file({k: v.clone() + 1 for k, v in ref.model.state_dict().items()}, str(path))
    assert card.digest() != d1


def test_zoo_never_imports_agglom():
    root = Path(teachers.__file__).parent
    for f in root.rglob("*.py"):
        text = f.read_text()
        assert not re.search(r"^\s*(from|import)\s+agglom\b", text, re.M), f


# --------------------------------------------------------------------------- CLI
def test_cli_list_show_check(capsys, tmp_path, monkeypatch):
    from agglom.cli import main

    monkeypatch.setenv("AGGLOM_WEIGHTS", str(tmp_path))
    assert main(["teachers", "list"]) == 0
    out = capsys.readouterr().out
    for n in ("clip-vit-b16", "dinov2-vitb14-reg", "sam-vit-b", "medsam", "biomedclip", "tiny-sam"):
        assert n in out
    assert "MISSING" in out and "Apache-2.0" in out and "MIT" in out

    assert main(["teachers", "show", "dinov2-vitb14-reg"]) == 0
    out = capsys.readouterr().out
    assert "vit_base_patch14_reg4_dinov2" in out and re.search(r"grid\s+\[16, 16\]", out)
    assert re.search(r"spatial_dim\s+768", out) and "digest:" in out

    assert main(["teachers", "show", "tiny-clip"]) == 0
    assert re.search(r"summary_dim\s+32", capsys.readouterr().out)

    assert main(["teachers", "check", "tiny-dinov2", "batch_size=2", "image_size=40", "iters=1"]) == 0
    out = capsys.readouterr().out
    assert "(2, 48)" in out and "(2, 48, 4, 4)" in out and "samples/s" in out and "FAIL" not in out
    assert "ok    no parameter requires grad" in out and "ok    output unchanged after .train()" in out

    assert main(["teachers", "check", "sam-vit-b"]) == 2
    assert "sam_vit_b_01ec64.pth" in capsys.readouterr().err
    assert main(["teachers", "show", "no-such-teacher"]) == 2
    assert "available cards" in capsys.readouterr().err


@pytest.mark.parametrize("name", TINY)
def test_every_tiny_card_passes_teachers_check(name, capsys):
    from agglom.cli import main

    assert main(["teachers", "check", name, "batch_size=2", "image_size=40", "iters=1"]) == 0
    out = capsys.readouterr().out
    ds, cs, grid, _ = EXPECTED[name]
    assert f"(2, {ds})" in out and f"(2, {cs}, {grid[0]}, {grid[1]})" in out and "FAIL" not in out


def test_weights_of_the_wrong_shape_fail_cleanly(tmp_path, capsys):
    """A checkpoint that does not fit the card's architecture: exit 2 naming the card and the file."""
    import yaml

    from agglom.cli import main as cli_main

    card = yaml.safe_load((Path(teachers.__file__).parent / "cards" / "tiny-sam.yaml").read_text())
    wrong = dict(card["model_args"], embed_dim=64, num_heads=2)
    from segment_anything.modeling import ImageEncoderViT

    enc = ImageEncoderViT(img_size=64, **{k: (tuple(v) if isinstance(v, list) else v) for k, v in wrong.items()})
    torch.save({f"image_encoder.{k}": v for k, v in enc.state_dict().items()}, tmp_path / "wrong.pth")
    card.update(name="wrong-sam", weights={"source": "file", "path": "./wrong.pth"}, tiny=False)
    (tmp_path / "wrong-sam.yaml").write_text(yaml.safe_dump(card))
    assert cli_main(["teachers", "check", str(tmp_path / "wrong-sam.yaml")]) == 2
    err = capsys.readouterr().err
    assert "wrong-sam" in err and "wrong.pth" in err and "do not fit" in err


def test_a_teachers_folder_in_the_working_directory_does_not_shadow_the_zoo(tmp_path):
    """`python -m agglom` puts the working directory first on sys.path; a user's `teachers/` folder (exported
    teachers, say) must not turn into a namespace package that hides the zoo."""
    import subprocess
    import sys

    (tmp_path / "teachers" / "ft-mine").mkdir(parents=True)
    r = subprocess.run([sys.executable, "-m", "agglom", "teachers", "list"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tiny-clip" in r.stdout
