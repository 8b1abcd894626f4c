"""`agglom data pack` from a CSV and from a class folder, incl. 16-bit PNG and DICOM; overwrite refusal."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from agglom.cli import main
from agglom.config.load import ConfigError, load_config
from agglom.config.schema import Recipe
from agglom.data.decode import decode_array
from agglom.data.readers import eval_loader
from agglom.data.writer import read_datasheet


def write_dicom(path, raw: np.ndarray, window=None, slope=1.0, intercept=0.0, photometric="MONOCHROME2"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.Rows, ds.Columns = raw.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = raw.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def _save_png(path, arr):
    Image.fromarray(arr).save(path)


def _samples(root, split=None):
    """key -> (json meta, image array) straight from the shards."""
    import webdataset as wds

    out = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if split and split_dir.name != split:
            continue
        for s in wds.tarfile_samples([dict(url=str(u)) for u in sorted(split_dir.glob("*.tar"))]):
            ext = next(e for e in ("png", "jpg", "npy") if e in s)
            out[s["__key__"]] = (json.loads(s["json"]), decode_array(s[ext], ext), ext)
    return out


def test_pack_folder_with_png16_and_dicom(tmp_path):
    src = tmp_path / "src"
    for c in ("benign", "malignant"):
        (src / c).mkdir(parents=True)
    for i in range(6):
        _save_png(src / "benign" / f"b{i}.png", np.full((12, 12), 20 * i, np.uint8))
    a16 = (np.arange(144, dtype=np.uint16).reshape(12, 12) * 450).astype(np.uint16)
    _save_png(src / "malignant" / "deep.png", a16)
    raw = np.tile(np.arange(0, 240, 20, dtype=np.uint16), (12, 1))  # 12 columns: 0..220
    write_dicom(src / "malignant" / "scan.dcm", raw, window=(100, 200), slope=2.0, intercept=-100.0)
    write_dicom(src / "malignant" / "nowin.dcm", raw, photometric="MONOCHROME1")
    buf = io.BytesIO()
    Image.fromarray(np.full((12, 12), 90, np.uint8)).save(buf, format="JPEG")
    (src / "malignant" / "m.jpg").write_bytes(buf.getvalue())
    (src / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    assert main(["data", "pack", f"out={out}", f"src={src}", "val_frac=0.2", "test_frac=0.2", "shard_size=3"]) == 0
    sheet = read_datasheet(out)
    assert sheet["samples"] == 10 and sheet["skipped"] == {"bad_image": 1}
    assert sheet["label"]["names"] == ["benign", "malignant"]
    got = _samples(out)
    assert len(got) == 10
    meta, arr, ext = got["malignant_deep"]
    assert ext == "png" and meta["label"] == 1 and np.allclose(arr, a16 / 65535.0)
    meta, arr, ext = got["malignant_scan"]
    assert ext == "png" and meta["label"] == 1
    hu = raw * 2.0 - 100.0  # rescale, then window [0, 200]
    assert np.allclose(arr, np.clip(hu / 200.0, 0, 1), atol=1e-4)
    _, arr, _ = got["malignant_nowin"]  # min/max window, MONOCHROME1 inverted
    assert np.allclose(arr, 1.0 - raw / 220.0, atol=1e-4)
    assert {m["split"] for m, _, _ in got.values()} <= {"train", "val", "test"}
    assert got["malignant_m"][2] == "jpg"
    # reading back through the eval reader keeps the 16-bit precision
    cfg = load_config(Recipe, [f"data.root={out}", "data.image_size=12", "student.model_args={patch_size: 4}", "data.grayscale=keep", "student.mean=[0]",
                               "student.std=[1]", "data.num_workers=0", "groups.by=none",
                               "groups.specs=[{name: none, attr: nothing, values: [x]}]"])
    split = got["malignant_deep"][0]["split"]
    for b in eval_loader(cfg, split):
        for k, img, g in zip(b["key"], b["image"], b["group"].tolist()):
            assert g == 1  # attribute missing -> unknown
            if k == "malignant_deep":
                assert np.allclose(img[0].numpy(), a16 / 65535.0, atol=1e-6)


def test_pack_csv_multilabel_attrs_and_overwrite(tmp_path):
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    rows = ["file,finding_a,finding_b,site,age,sex"]
    for i in range(40):
        _save_png(img_dir / f"x{i}.png", np.full((8, 8), 3 * i, np.uint8))
        site = "AB"[i % 2] if i % 10 else ""
        rows.append(f"imgs/x{i}.png,{i % 2},{(i // 2) % 2},{site},{20 + i},{'FM'[i % 3 % 2]}")
    rows.append("imgs/missing.png,1,0,A,50,F")
    rows.append("imgs/x1.png,maybe,0,A,50,F")  # bad label
    _save_png(img_dir / "x40.png", np.full((8, 8), 200, np.uint8))
    rows.append("imgs/x40.png,-1,,A,50,F")  # CheXpert style: uncertain + not mentioned
    csv_path = tmp_path / "meta.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    out = tmp_path / "packed"
    args = ["data", "pack", str(out), f"csv={csv_path}", "path_col=file", "label_cols=[finding_a,finding_b]",
            "stratify=[site]", "seed=3"]
    assert main(args) == 0
    sheet = read_datasheet(out)
    assert sheet["samples"] == 41 and sheet["skipped"] == {"missing_file": 1, "bad_label": 1}
    assert sheet["label"]["type"] == "multilabel" and sheet["label"]["num_classes"] == 2
    assert sheet["label"]["names"] == ["finding_a", "finding_b"]
    assert sheet["params"]["labels_converted"] == {"uncertain_label": 1, "blank_label": 1}
    site = sheet["attributes"]["site"]
    assert site["values"] == ["A", "B"] and sum(site["missing"].values()) == 4
    assert sheet["attributes"]["age"]["type"] == "numeric" and sheet["attributes"]["age"]["summary"]["all"]["min"] == 20
    assert sum(sheet["splits"][s]["samples"] for s in sheet["splits"]) == 41
    assert [v for v in _samples(out).values() if v[0]["source"] == "imgs/x40.png" and v[0]["label"] == [0, 0]]
    got = _samples(out)
    m = got["imgs_x5"][0]
    assert m["label"] == [1, 0] and m["attrs"] == {"site": "B", "age": 25, "sex": "F"} and m["source"] == "imgs/x5.png"
    assert "site" not in got["imgs_x10"][0]["attrs"]
    # deterministic split: packing again (force) gives the same assignment
    first = {k: v[0]["split"] for k, v in got.items()}
    assert main(args) == 2  # refuses to overwrite
    assert main(args + ["force=true"]) == 0
    assert {k: v[0]["split"] for k, v in _samples(out).items()} == first
    # U-Ones for uncertain labels, and dropping images whose findings are blank
    assert main(args + ["force=true", "uncertain=ones", "blank=drop"]) == 0
    sheet = read_datasheet(out)
    assert sheet["samples"] == 40 and sheet["skipped"]["dropped_label"] == 1
    assert main(args + ["force=true", "uncertain=maybe"]) == 2
    cfg = load_config(Recipe, [f"data.root={out}", "data.num_workers=0", "groups.by=site", "data.image_size=8",
                             "student.model_args={patch_size: 4}"])
    b = next(iter(eval_loader(cfg, "train")))
    assert b["label"].shape[1] == 2


def test_pack_refuses_overwrite_and_bad_args(tmp_path, capsys):
    from agglom.data.args import PackConfig
    from agglom.data.pack import pack

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    _save_png(src / "a" / "1.png", np.zeros((4, 4), np.uint8))
    out = tmp_path / "o"
    cfg = load_config(PackConfig, [f"out={out}", f"src={src}"])
    pack(cfg)
    with pytest.raises(ConfigError, match="force=true"):
        pack(cfg)
    assert main(["data", "pack", f"out={out}", f"src={src}"]) == 2
    assert "force=true" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="exactly one source"):
        pack(load_config(PackConfig, [f"out={tmp_path / 'p'}"]))


def _dicom_base(path, rows, cols, **attrs):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_dicom_palette_multiframe_and_skip_reasons(tmp_path):
    """PALETTE COLOR is stored through its palette (not as indices), a multi-frame file keeps its middle frame,
    and each kind of unusable file is counted under its own reason — all said in the datasheet."""
    src = tmp_path / "src" / "c"
    src.mkdir(parents=True)
    for i in range(4):
        _save_png(src / f"p{i}.png", np.full((8, 8), 30 * i, np.uint8))
    idx = np.tile(np.arange(4, dtype=np.uint8), (8, 2))  # palette indices 0..3
    red = np.array([0, 100, 200, 255], np.uint16) * 257
    pal = _dicom_base(src / "palette.dcm", 8, 8, PhotometricInterpretation="PALETTE COLOR", BitsAllocated=8,
                      BitsStored=8, HighBit=7, PixelRepresentation=0)
    for c, lut in (("Red", red), ("Green", np.zeros(4, np.uint16)), ("Blue", np.full(4, 65535, np.uint16))):
        setattr(pal, f"{c}PaletteColorLookupTableDescriptor", [4, 0, 16])
        setattr(pal, f"{c}PaletteColorLookupTableData", lut.tobytes())
    pal.PixelData = idx.tobytes()
    pal.save_as(str(src / "palette.dcm"), enforce_file_format=True)
    frames = np.stack([np.full((8, 8), v, np.uint16) for v in (100, 200, 300)])
    mf = _dicom_base(src / "multi.dcm", 8, 8, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16,
                     BitsStored=16, HighBit=15, PixelRepresentation=0, NumberOfFrames=3, WindowCenter=200,
                     WindowWidth=400)
    mf.PixelData = frames.tobytes()
    mf.save_as(str(src / "multi.dcm"), enforce_file_format=True)
    nopix = _dicom_base(src / "report.dcm", 8, 8)
    nopix.save_as(str(src / "report.dcm"), enforce_file_format=True)
    (src / "junk.dcm").write_bytes(b"this is not dicom at all")
    out = tmp_path / "out"
    assert main(["data", "pack", f"out={out}", f"src={tmp_path / 'src'}", "val_frac=0", "test_frac=0"]) == 0
    sheet = read_datasheet(out)
    assert sheet["skipped"] == {"dicom_no_pixels": 1, "dicom_unreadable": 1}
    assert sheet["params"]["dicom_converted"] == {"palette_color_applied": 1, "multiframe_middle_frame": 1}
    got = _samples(out)
    _, rgb, _ = got["c_palette"]
    assert rgb.shape == (8, 8, 3)
    assert np.allclose(rgb[0, :4, 0], [0, 100 / 255, 200 / 255, 1.0], atol=1 / 255)  # red through the palette
    assert np.allclose(rgb[..., 2], 1.0) and np.allclose(rgb[..., 1], 0.0)
    _, mid, _ = got["c_multi"]
    assert np.allclose(mid, 0.5, atol=1e-4)  # frame 2 of 3 (200), windowed [0, 400]
