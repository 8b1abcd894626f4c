"""The teacher-feature cache through the real CLI: layout, resume, fidelity, size, staleness, mixed training."""
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from agglom.cli import main

TEACHERS = "[{name: tiny-clip}, {name: tiny-sam}]"


def cache_args(root, out, *extra):
    return [f"data.root={root}", "data.image_size=32", f"teachers={TEACHERS}", f"cache.out={out}",
            "data.num_workers=0", *extra]


def keys_of(tar_path):
    with tarfile.open(tar_path) as tar:
        return {m.name.split(".", 1)[0] for m in tar.getmembers()}


def manifest(d, teacher):
    return json.loads((Path(d) / teacher / "manifest.json").read_text())


@pytest.fixture(scope="module")
def caches(synth_root, tmp_path_factory):
    """fp16, int8 and int8 + 2x2 pooling caches of tiny-clip and tiny-sam over the synth fixture."""
    base = tmp_path_factory.mktemp("caches")
    out = {}
    for tag, extra in (("fp16", []), ("int8", ["cache.dtype=int8"]), ("pool2", ["cache.dtype=int8", "cache.pool=2"])):
        out[tag] = base / tag
        assert main(["cache", *cache_args(synth_root, out[tag], *extra)]) == 0
    return out


def test_cache_layout_keys_and_manifest(synth_root, caches):
    for teacher in ("tiny-clip", "tiny-sam"):
        m = manifest(caches["fp16"], teacher)
        assert m["complete"] and m["teacher"] == teacher and m["dtype"] == "fp16"
        assert m["preprocessing"]["image_size"] == 32 and len(m["card_digest"]) == 64
        for split in ("train", "val", "test"):
            images = sorted((Path(synth_root) / split).glob("*.tar"))
            cached = sorted((caches["fp16"] / teacher / split).glob("*.tar"))
            assert [p.name for p in cached] == [p.name for p in images]  # one cache shard per image shard
            for img, feat in zip(images, cached):
                assert keys_of(feat) == keys_of(img)  # identical keys
                assert m["splits"][split]["shards"][img.name] == len(keys_of(img))


def test_cache_resumes_shard_by_shard(synth_root, tmp_path):
    out = tmp_path / "c"
    args = cache_args(synth_root, out, "cache.teachers=[tiny-clip]")
    assert main(["cache", *args]) == 0
    shards = sorted((out / "tiny-clip").glob("*/*.tar"))
    before = {p: p.stat().st_mtime_ns for p in shards}
    victim = out / "tiny-clip" / "train" / "train-000002.tar"
    victim.unlink()
    m = manifest(out, "tiny-clip")
    del m["splits"]["train"]["shards"]["train-000002.tar"]
    m["complete"] = False
    (out / "tiny-clip" / "manifest.json").write_text(json.dumps(m))
    assert main(["cache", *args]) == 0
    after = {p: p.stat().st_mtime_ns for p in shards}
    rewritten = [p.name for p in shards if after[p] != before.get(p)]
    assert rewritten == ["train-000002.tar"]
    assert manifest(out, "tiny-clip")["complete"]
    # a complete cache: nothing is rewritten
    again = {p: p.stat().st_mtime_ns for p in shards}
    assert main(["cache", *args]) == 0
    assert {p: p.stat().st_mtime_ns for p in shards} == again


def test_round_trips_and_check_prints_cosines(synth_root, caches, capsys):
    for tag, floor in (("fp16", 0.9999), ("int8", 0.99), ("pool2", 0.99)):
        capsys.readouterr()
        assert main(["cache check", *cache_args(synth_root, caches[tag], "cache.n=64")]) == 0
        out = capsys.readouterr().out
        rows = re.findall(r"^(\S+)\s+summary cos ([\d.]+) \(min ([\d.]+)\)\s+spatial cos ([\d.]+) \(min ([\d.]+)\)",
                          out, re.M)
        assert sorted(r[0] for r in rows) == ["tiny-clip", "tiny-sam"], out
        for name, *cos in rows:
            assert min(float(c) for c in cos) >= floor, (tag, name, cos)


def test_int8_and_pooling_shrink_the_cache(caches):
    for teacher in ("tiny-clip", "tiny-sam"):
        m16, m8, mp = (manifest(caches[t], teacher) for t in ("fp16", "int8", "pool2"))
        h, w = m16["grid"]
        bf16_full = 2 * (m16["summary_dim"] + m16["spatial_dim"] * h * w)
        assert m16["bytes_per_sample"] == bf16_full
        assert m8["bytes_per_sample"] <= 0.55 * bf16_full
        assert mp["bytes_per_sample"] < 0.5 * m8["bytes_per_sample"]
        assert mp["grid"] == [-(-h // 2), -(-w // 2)]
        assert m8["disk_bytes_per_sample"] < m16["disk_bytes_per_sample"]


def test_stale_cache_is_refused_naming_what_changed(synth_root, caches, tiny_train_args, tmp_path, capsys):
    from agglom.cache import StaleCacheError, open_cache
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    d = caches["int8"]
    # another input size
    assert main(["cache check", *cache_args(synth_root, d, "data.image_size=48")]) == 2
    err = capsys.readouterr().err
    assert "stale feature cache for tiny-clip" in err and "image_size 32 != 48" in err
    args = tiny_train_args("stale", steps=2, **{"data.image_size": 48,
                                               "teachers": f"[{{name: tiny-clip, cache: {d}}}, {{name: tiny-sam}}]"})
    assert main(["train", *args]) == 2
    assert "image_size 32 != 48" in capsys.readouterr().err
    # another card (same name, other seed -> other weights): the digest differs
    card = yaml.safe_load((Path(__file__).parents[2] / "teachers" / "cards" / "tiny-clip.yaml").read_text())
    card["seed"] = 99
    path = tmp_path / "tiny-clip.yaml"
    path.write_text(yaml.safe_dump(card))
    args = tiny_train_args("stale2", steps=2, teachers=f"[{{name: {path}, cache: {d}}}]")
    assert main(["train", *args]) == 2
    assert "card digest" in capsys.readouterr().err
    cfg = load_config(Recipe, args)
    with pytest.raises(StaleCacheError, match="card or weights changed"):
        open_cache(str(d), str(path), cfg, "0" * 64)


def test_mixed_cached_and_online_training(caches, tiny_train_args, monkeypatch):
    import teachers as zoo
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe
    from agglom.data.readers import train_loader
    from agglom.distill.setup import build_teachers
    from agglom.distill.task import AgglomTask, is_cached, teacher_spec
    from agglom.train.setup import group_names

    d = caches["int8"]
    built = []
    real_build = zoo.build_teacher

    def recording_build(card, *a, **k):
        built.append(zoo.load_card(card).name)
        return real_build(card, *a, **k)

    monkeypatch.setattr(zoo, "build_teacher", recording_build)
    args = tiny_train_args("mixed", steps=4, **{"teachers": f"[{{name: tiny-clip, cache: {d}}}, {{name: tiny-sam}}]"})
    assert main(["train", *args]) == 0
    assert built == ["tiny-sam"]  # the cached teacher is never built
    run = Path(dict(a.split("=", 1) for a in args)["out_dir"]) / "mixed"
    assert json.loads((run / "run.json").read_text())["step"] == 4
    assert [t["name"] for t in json.loads((run / "teachers.json").read_text())] == ["tiny-clip", "tiny-sam"]

    # the cached teacher's targets are the online teacher's, within int8 tolerance
    cfg = load_config(Recipe, args)
    mixed = build_teachers(cfg, torch.device("cpu"))
    assert is_cached(mixed["tiny-clip"]) and not is_cached(mixed["tiny-sam"])
    online = real_build("tiny-clip", input_mean=[0.5] * 3, input_std=[0.5] * 3)
    task = AgglomTask(cfg, [teacher_spec(e, mixed[e.name]) for e in cfg.teachers], mixed, group_names(cfg), 3)
    batch = next(iter(train_loader(cfg)))
    got = task.raw_targets(batch, batch["image"])["tiny-clip"]
    with torch.no_grad():
        want = online(batch["image"])
    assert got["summary"].shape == want.summary.shape and got["spatial"].shape == want.spatial.shape
    assert F.cosine_similarity(got["summary"], want.summary, dim=-1).min() > 0.99
    assert F.cosine_similarity(got["spatial"], want.spatial, dim=1).min() > 0.99
    scale = want.spatial.abs().amax(dim=(0, 2, 3), keepdim=True)
    assert ((got["spatial"] - want.spatial).abs() <= scale / 127 + 1e-6).all()  # int8 per-channel step


def test_cached_features_read_in_the_workers_equal_the_main_process_read(caches, tiny_train_args):
    """data.cache_in_workers: the two data workers attach the cached features to each batch; the targets (and so a
    whole training run) are the same as when the main process reads them."""
    from itertools import islice

    from agglom.config.load import load_config
    from agglom.config.schema import Recipe
    from agglom.data.readers import train_loader
    from agglom.distill.setup import build_teachers
    from agglom.distill.task import AgglomTask, teacher_spec
    from agglom.train.logger import MetricLogger
    from agglom.train.setup import group_names

    d = caches["fp16"]
    both = f"[{{name: tiny-clip, cache: {d}}}, {{name: tiny-sam, cache: {d}}}]"
    runs = {}
    for flag in ("true", "false"):
        args = tiny_train_args(f"workers-{flag}", steps=4, **{"teachers": both, "data.num_workers": 2,
                                                             "data.cache_in_workers": flag, "log.interval": 1})
        assert main(["train", *args]) == 0
        runs[flag] = [r["loss"] for r in MetricLogger.read(Path(dict(a.split("=", 1) for a in args)["out_dir"])
                                                            / f"workers-{flag}" / "metrics.jsonl") if "loss" in r]
    assert len(runs["true"]) == 4 and runs["true"] == runs["false"]

    cfg = load_config(Recipe, args)
    teachers = build_teachers(cfg, torch.device("cpu"))
    task = AgglomTask(cfg, [teacher_spec(e, teachers[e.name]) for e in cfg.teachers], teachers, group_names(cfg), 3)
    assert task.worker_reads() is None  # data.cache_in_workers=false (the last run's recipe)
    cfg.data.cache_in_workers = True
    attach = task.worker_reads()
    assert sorted(attach.teachers) == ["tiny-clip", "tiny-sam"]
    main_read = list(islice(train_loader(cfg), 3))
    worker_read = list(islice(train_loader(cfg, attach=attach), 3))
    for a, b in zip(main_read, worker_read):
        assert a["key"] == b["key"] and not any(k.startswith("cached/") for k in a)
        assert b["cached/tiny-sam/spatial"].shape[0] == len(b["key"])
        ta, tb = task.raw_targets(a, a["image"]), task.raw_targets(b, b["image"])
        for name in ("tiny-clip", "tiny-sam"):
            for kind in ("summary", "spatial"):
                assert torch.equal(ta[name][kind], tb[name][kind]), (name, kind)


def test_missing_key_and_uncovered_split_fail_clearly(caches, tiny_train_args, tmp_path, capsys):
    from agglom.cache import CacheKeyError, open_cache
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    d = tmp_path / "cut"
    shutil.copytree(caches["int8"] / "tiny-clip", d / "tiny-clip")
    shard = d / "tiny-clip" / "train" / "train-000000.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    lost = members[0][0].name.split(".", 1)[0]
    with tarfile.open(shard, "w") as tar:
        for m, data in members:
            if not m.name.startswith(lost + "."):
                import io

                tar.addfile(m, io.BytesIO(data))
    args = tiny_train_args("lost", steps=2, teachers=f"[{{name: tiny-clip, cache: {d}}}]")
    cfg = load_config(Recipe, args)
    import teachers as zoo

    cached = open_cache(str(d), "tiny-clip", cfg, zoo.load_card("tiny-clip").digest())
    with pytest.raises(CacheKeyError, match=f"no entry for sample '{lost}'"):
        cached.lookup([lost])
    assert main(["train", *args]) == 2  # the stats pass reads the first training samples
    assert f"no entry for sample '{lost}'" in capsys.readouterr().err

    # a cache of other splits only does not cover the training split
    (d / "tiny-clip" / "train" / "train-000001.tar").unlink()
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert "does not cover split 'train'" in err and "train-000001.tar" in err


def test_cache_of_regenerated_images_is_refused(tmp_path):
    """Same shard names and counts, other images (another seed): the shard fingerprints catch it."""
    from omegaconf import OmegaConf

    from agglom.cache import StaleCacheError, open_cache
    from agglom.config.schema import Recipe
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path / "ds"
    write_synth(str(root), SynthParams(n=60, image_size=32, seed=0), shard_size=30)
    out = tmp_path / "c"
    assert main(["cache", *cache_args(root, out, "cache.teachers=[tiny-clip]")]) == 0
    cfg = OmegaConf.merge(OmegaConf.structured(Recipe), {"data": {"root": str(root), "image_size": 32}})
    import teachers as zoo

    digest = zoo.load_card("tiny-clip").digest()
    open_cache(str(out), "tiny-clip", cfg, digest, split=["train", "val", "test"])
    write_synth(str(root), SynthParams(n=60, image_size=32, seed=1), shard_size=30, force=True)
    with pytest.raises(StaleCacheError, match="written for other images"):
        open_cache(str(out), "tiny-clip", cfg, digest, split=["train", "val", "test"])
    # `agglom cache` again rewrites the changed shards instead of skipping them as done
    assert main(["cache", *cache_args(root, out, "cache.teachers=[tiny-clip]")]) == 0
    open_cache(str(out), "tiny-clip", cfg, digest, split=["train", "val", "test"])


@pytest.mark.slow
def test_cached_training_equals_online_training_over_20_steps(synth_root, tmp_path, tiny_train_args):
    """An fp32 cache of tiny-clip and tiny-dinov2 trains exactly as the online teachers do (same seed, 20 steps);
    fp16 storage adds a small, bounded difference (quantisation, amplified by the z-score normaliser)."""
    from agglom.train.logger import MetricLogger

    teachers = ["tiny-clip", "tiny-dinov2"]
    cache = tmp_path / "c32"
    assert main(["cache", f"data.root={synth_root}", "data.image_size=32", "data.num_workers=0", f"cache.out={cache}",
                 "cache.dtype=fp32", "teachers=[" + ", ".join(f"{{name: {t}}}" for t in teachers) + "]"]) == 0
    over = {"log.interval": 1, "log.checkpoint_interval": 100, "data.num_workers": 0, "data.batch_size": 8,
            "heads.stats_samples": 16}
    online = tiny_train_args("online", steps=20, teachers="[" + ", ".join(f"{{name: {t}}}" for t in teachers) + "]",
                             **over)
    cached = tiny_train_args("cached", steps=20, **over,
                             teachers="[" + ", ".join(f"{{name: {t}, cache: {cache}}}" for t in teachers) + "]")
    curves = []
    for args in (online, cached):
        assert main(["train", *args]) == 0
        run = Path(dict(a.split("=", 1) for a in args)["out_dir"]) / dict(a.split("=", 1) for a in args)["name"]
        curves.append([(r["loss"], r["teacher/tiny-clip"], r["teacher/tiny-dinov2"])
                       for r in MetricLogger.read(run / "metrics.jsonl") if "loss" in r])
    assert len(curves[0]) == len(curves[1]) == 20
    assert torch.allclose(torch.tensor(curves[0]), torch.tensor(curves[1]), rtol=1e-5, atol=1e-6)


def _read_all(teacher, keys, rounds, out):
    import numpy as np

    got = {}
    for _ in range(rounds):
        for k in keys:
            s, p = teacher.get(k)
            got.setdefault(k, (np.asarray(s).tobytes(), np.asarray(p).tobytes()))
            if got[k] != (np.asarray(s).tobytes(), np.asarray(p).tobytes()):
                out.put("changed")
                return
    out.put(got)


def test_forked_workers_read_the_cache_with_their_own_handles(caches, tiny_train_args):
    """Data workers are forked from a main process that already read the cache: with shared descriptors (one file
    offset) their seek + read pairs would interleave and return other members' bytes."""
    import multiprocessing as mp

    import numpy as np

    import teachers as zoo
    from agglom.cache import open_cache
    from agglom.config.load import load_config
    from agglom.config.schema import Recipe

    cfg = load_config(Recipe, tiny_train_args("fork", steps=1))
    teacher = open_cache(str(caches["fp16"]), "tiny-sam", cfg, zoo.load_card("tiny-sam").digest())
    keys = teacher.keys()[:24]
    want = {k: tuple(np.asarray(a).tobytes() for a in teacher.get(k)) for k in keys}  # the parent's handles are open
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_read_all, args=(teacher, keys[i::2] + keys, 40, out)) for i in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    for got in results:
        assert got != "changed" and got == {k: want[k] for k in got}
