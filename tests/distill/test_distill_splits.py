"""Label-free distill splits (``data.distill_splits``) and the synthetic benchmark's ``unlabeled`` split."""
from __future__ import annotations

import json

import pytest
import torch
import webdataset as wds

from agglom.cli import main
from agglom.config.load import ConfigError
from agglom.data.readers import train_loader
from agglom.data.sampling import acceptance, group_counts
from agglom.data.synth import UNLABELED_SPLIT, SynthParams, write_synth


@pytest.fixture(scope="module")
def with_unlabeled(tmp_path_factory):
    """The same 120-subject benchmark twice: without and with 60 unlabeled subjects (shards of 40)."""
    base = tmp_path_factory.mktemp("distill")
    plain, pooled = base / "plain", base / "pooled"
    p = SynthParams(n=120, image_size=32, seed=3)
    write_synth(str(plain), p, shard_size=40, val_frac=0.25, test_frac=0.25)
    write_synth(str(pooled), p, shard_size=40, val_frac=0.25, test_frac=0.25, unlabeled=60)
    return plain, pooled


def _samples(root, split):
    out = {}
    for shard in sorted((root / split).glob("*.tar")):
        for s in wds.WebDataset(str(shard), shardshuffle=False, empty_check=False):
            out[s["__key__"]] = s
    return out


def test_the_unlabeled_split_changes_no_benchmark_image_and_carries_no_label(with_unlabeled):
    plain, pooled = with_unlabeled
    for split in ("train", "val", "test"):
        a, b = _samples(plain, split), _samples(pooled, split)
        assert a.keys() == b.keys()
        assert all(a[k]["png"] == b[k]["png"] and a[k]["json"] == b[k]["json"] for k in a)
    extra = _samples(pooled, UNLABELED_SPLIT)
    assert len(extra) == 60 and not (extra.keys() & _samples(pooled, "train").keys())
    metas = [json.loads(s["json"]) for s in extra.values()]
    assert {m["label"] for m in metas} == {-1}  # agglom.data.pipeline.NO_LABEL
    assert all(m["attrs"]["site"] in ("A", "B") for m in metas)
    assert not any("mask.png" in s for s in extra.values())
    sheet = json.loads((pooled / "dataset.json").read_text())
    assert sheet["splits"][UNLABELED_SPLIT]["samples"] == 60
    assert "no evaluation reads it" in sheet["split_design"]
    # an independent draw: not the benchmark's first 60 subjects again
    train_pngs = {s["png"] for s in _samples(pooled, "train").values()}
    assert not any(s["png"] in train_pngs for s in extra.values())


def test_the_training_stream_reads_the_distill_splits_and_only_when_asked(with_unlabeled, data_cfg):
    _, pooled = with_unlabeled

    def keys(cfg):
        return [k for b in train_loader(cfg, epoch=0) for k in b["key"]]

    assert not any(k.startswith("unlab") for k in keys(data_cfg(pooled, 320)))
    got = keys(data_cfg(pooled, 320, **{"data.distill_splits": [UNLABELED_SPLIT]}))
    assert any(k.startswith("unlab") for k in got) and any(k.startswith("synth") for k in got)


def test_group_balancing_counts_the_distill_splits(with_unlabeled, data_cfg):
    from agglom.data.readers import group_indexer

    _, pooled = with_unlabeled
    cfg = data_cfg(pooled, 320, **{"data.distill_splits": [UNLABELED_SPLIT], "data.group_balanced": True})
    idx = group_indexer(cfg)
    sheet = json.loads((pooled / "dataset.json").read_text())
    total = [a + b for a, b in zip(group_counts(cfg, idx, "train", sheet, {}),
                                   group_counts(cfg, idx, UNLABELED_SPLIT, sheet, {}))]
    w = acceptance(cfg, idx, sheet, {})
    expected = [1.0 / c if c else 0.0 for c in total]
    top = max(expected)
    assert w == pytest.approx([e / top for e in expected])
    train_only = acceptance(data_cfg(pooled, 320, **{"data.group_balanced": True}), idx, sheet, {})
    assert w != pytest.approx(train_only)  # the unlabeled split moved the counts


def test_a_missing_distill_split_and_finetune_with_one_are_refused_by_name(with_unlabeled, data_cfg, tiny_train_args,
                                                                           capsys):
    plain, pooled = with_unlabeled
    from agglom.train.preflight import check_data

    with pytest.raises(ConfigError, match="unlabeled"):
        check_data(data_cfg(plain, 320, **{"data.distill_splits": [UNLABELED_SPLIT]}))
    code = main(["finetune", "model=vit_small_patch16_224", "model_args={patch_size: 8, embed_dim: 32, depth: 1, "
                 "num_heads: 2}", f"data.root={pooled}", "data.image_size=32", "data.num_workers=0", "optim.steps=2",
                 "groups.by=site", f"data.distill_splits=[{UNLABELED_SPLIT}]", f"out_dir={pooled.parent / 'ft'}"])
    assert code == 2
    assert "data.distill_splits" in capsys.readouterr().err


def test_a_cache_without_the_distill_split_is_refused_and_the_default_cache_covers_it(with_unlabeled, data_cfg,
                                                                                       tmp_path, capsys):
    from agglom.cache import StaleCacheError
    from agglom.cache.writer import write_cache
    from agglom.distill.setup import build_teachers

    _, pooled = with_unlabeled
    cfg = data_cfg(pooled, 320, **{"teachers": [{"name": "tiny-clip"}]})
    write_cache(cfg, out=str(tmp_path / "c"), splits=["train"])
    cfg.teachers[0].cache = str(tmp_path / "c")
    build_teachers(cfg, torch.device("cpu"))  # train alone: covered
    cfg.data.distill_splits = [UNLABELED_SPLIT]
    with pytest.raises(StaleCacheError, match=f"does not cover split '{UNLABELED_SPLIT}'"):
        build_teachers(cfg, torch.device("cpu"))
    write_cache(cfg, out=str(tmp_path / "c"))  # the default splits: train, the distill splits, val, test
    teachers = build_teachers(cfg, torch.device("cpu"))
    got = teachers["tiny-clip"].lookup(["unlab000000", "synth000000"])
    assert got["summary"].shape[0] == 2
