"""A CheXpert-style multi-label CSV through pack -> train -> eval: label names survive, one calibration plot
per label, uncertain/blank labels mapped by policy."""
import csv
import json

import numpy as np
from PIL import Image

from agglom.cli import main


def test_multilabel_csv_pack_train_eval(tmp_path, tiny_student):
    rng = np.random.default_rng(0)
    rows = [["Path", "No Finding", "Effusion", "Sex", "Age"]]
    (tmp_path / "img").mkdir()
    for i in range(90):
        eff = int(i % 3 == 0)
        img = rng.normal(100 + 60 * eff, 20, (32, 32)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "img" / f"{i}.png")
        nf = "" if i % 7 == 0 else str(1 - eff)
        rows.append([f"img/{i}.png", nf, "-1" if i % 11 == 0 else str(eff), "FM"[i % 2] if i % 9 else "", 30 + i % 50])
    with open(tmp_path / "train.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    data = tmp_path / "cxp"
    assert main(["data", "pack", str(data), f"csv={tmp_path / 'train.csv'}", "path_col=Path",
                 "label_cols=[No Finding,Effusion]", "attr_cols=[Sex,Age]", "stratify=[Sex]"]) == 0
    sheet = json.loads((data / "dataset.json").read_text())
    assert sheet["label"]["names"] == ["No Finding", "Effusion"] and sheet["samples"] == 90
    run = tmp_path / "runs"
    assert main(["train", "name=ml", f"out_dir={run}", f"data.root={data}", "data.image_size=32", "data.batch_size=16",
                 "data.num_workers=0", "data.epoch_samples=32", "teachers=[{name: tiny-clip}]",
                 f"student.model_args={tiny_student}", "heads.stats_samples=16", "optim.steps=2",
                 "log.checkpoint_interval=2", "log.progress=off", "groups.by=Sex"]) == 0
    assert main(["eval", str(run / "ml"), "eval.bootstrap=0", "eval.label_fractions=[]", "num_workers=0"]) == 0
    ev = run / "ml" / "eval"
    rep = json.loads((ev / "report.json").read_text())
    sex = rep["models"]["ml"]["attributes"]["Sex"]
    assert sex["label_names"] == ["No Finding", "Effusion"]
    assert {p.name for p in ev.glob("calibration_ml_Sex_*.png")} == {"calibration_ml_Sex_No_Finding.png",
                                                                      "calibration_ml_Sex_Effusion.png"}
    header = (ev / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "label:No Finding" in header and "score:Effusion" in header
