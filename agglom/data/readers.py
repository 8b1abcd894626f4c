"""WebDataset readers: a resampled, shuffled, resumable training stream and an exact single-pass eval reader.

Both run the same stages inside DataLoader workers (batching included; the loader has ``batch_size=None``):
tar reading through webdataset with a counting handler -> json/label/attrs parsing (+ sidecars, group index)
-> [train: group acceptance sampling, shuffle buffer] -> decode -> transform -> batch. Every bad input is
skipped and counted by reason; each worker sends its counts as a final marker item, the :class:`Loader` sums
them into ``.stats`` and logs them when the pass ends.

This module holds the streams, the :class:`Loader` and their entry points (:func:`train_loader`,
:func:`eval_loader`), plus shard lookup and the group indexer. Sidecar parsing lives in
:mod:`agglom.data.sidecars` and group-weighted acceptance in :mod:`agglom.data.sampling`; both are re-exported
here, so every name in ``__all__`` still imports from ``agglom.data.readers``.

Determinism (training). Logical worker ``L`` of rank ``r`` draws everything (shard resampling, acceptance,
shuffling, per-batch augmentation) from seeds derived from ``(cfg.data.seed, epoch, r, L)``. Batches are
dealt round-robin: global batch ``j`` of a rank is batch ``j // W`` of logical worker ``j % W``. To resume
after ``k`` batches, physical worker ``p`` plays logical worker ``(p + k) % W`` and drops its batches with
global index ``< k`` (they are still read and decoded, so skips stay identical, but not augmented); the
DataLoader's round-robin then yields exactly the remaining batches in the original order. Resuming needs
the same ``num_workers``, ``WORLD_SIZE`` and data.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import braceexpand
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from agglom.data.decode import DecodeError, decode_array, find_image, to_channels
from agglom.data.groups import GroupIndexer
from agglom.data.sampling import acceptance, group_counts
from agglom.data.sidecars import datasheet_with_sidecars, load_sidecars
from agglom.data.transforms import ImageTransform, build_transform
from agglom.data.writer import read_datasheet
from agglom.dist import dist_info

log = logging.getLogger("agglom.data")
STATS_MARKER = "__agglom_stats__"
SKIP_REASONS = ("bad_tar", "bad_json", "missing_field", "bad_label", "bad_image", "missing_samples")


class SkipCounts(dict):
    """reason -> number of skipped items: ``bad_tar`` counts shard reads that failed (truncated/unreadable tar),
    ``bad_json``/``missing_field``/``bad_label``/``bad_image`` count samples, and ``missing_samples`` (single-rank
    eval passes over a split of a datasheet) counts samples the datasheet lists that no reader saw at all
    (e.g. lost in a tar truncated at a member boundary, which Python's tarfile takes for a clean end)."""

    def add(self, other: Mapping[str, int]) -> None:
        for k, v in other.items():
            if v:
                self[k] = self.get(k, 0) + int(v)

    @property
    def total(self) -> int:
        return sum(self.values())


def _mix(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python hash randomisation)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _no_worker_seed() -> int:
    return 0


class _Counter:
    """Per-worker skip counts; ``handler`` is webdataset's exception hook (one bad_tar per shard read)."""

    def __init__(self, count_tar: bool = True):
        self.counts: Dict[str, int] = {}
        self.shard_seq = 0
        self._counted_seq = -1
        self.count_tar = count_tar
        self.good = 0
        self.parsed = 0  # samples whose metadata parsed (before group acceptance and shuffling)

    def skip(self, reason: str, key: Any = None, detail: Any = None) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        log.debug("skip %s %s: %s", reason, key, detail)

    def handler(self, exn: BaseException) -> bool:
        if self.count_tar and self._counted_seq != self.shard_seq:
            self._counted_seq = self.shard_seq
            self.skip("bad_tar", None, repr(exn)[:300])
        return True  # continue with the next shard


# --------------------------------------------------------------------------- shards, group indexer
def shard_urls(cfg: Any, split: str) -> List[str]:
    """Shard paths of a split: ``cfg.data.shards`` (brace pattern; ``{split}`` is substituted, and a pattern
    without it applies to the training split only) else sorted ``<cfg.data.root>/<split>/*.tar``."""
    from agglom.config.load import ConfigError

    data = cfg.data
    pattern = data.get("shards") if hasattr(data, "get") else getattr(data, "shards", None)
    if pattern and ("{split}" in pattern or split == data.train_split):
        pattern = pattern.replace("{split}", split)
        urls = [u for u in braceexpand.braceexpand(pattern)]
        missing = [u for u in urls if not os.path.exists(u)]
        if missing and len(missing) == len(urls):
            raise ConfigError(f"data.shards={pattern!r}: none of its {len(urls)} shard files exists")
        return urls
    folder = Path(data.root) / split
    urls = sorted(glob.glob(str(folder / "*.tar")))
    if not urls:
        raise ConfigError(f"no shards for split {split!r}: {folder}/*.tar is empty "
                          f"(write a dataset with `agglom data synth` or `agglom data pack`, or set data.root)")
    return urls


def _cfg_get(node: Any, key: str, default: Any = None) -> Any:
    try:
        v = node.get(key, default) if hasattr(node, "get") else getattr(node, key, default)
    except Exception:
        return default
    return default if v is None else v


def group_indexer(cfg: Any, datasheet: Optional[Mapping[str, Any]] = None, by: Optional[str] = None) -> GroupIndexer:
    """The GroupIndexer for cfg.groups over the dataset's datasheet (+ sidecars); ConfigError if unresolvable."""
    from agglom.config.load import ConfigError

    if datasheet is None:
        datasheet = datasheet_with_sidecars(read_datasheet(cfg.data.root), load_sidecars(list(cfg.data.sidecars)))
    groups = _cfg_get(cfg, "groups")
    try:
        return GroupIndexer(list(_cfg_get(groups, "specs", [])), by=by or _cfg_get(groups, "by", "site"),
                            datasheet=datasheet)
    except ValueError as e:
        raise ConfigError(f"groups.by={by or _cfg_get(groups, 'by', 'site')!r}: {e}") from e


# --------------------------------------------------------------------------- per-sample parsing
def _parse(sample: Dict[str, Any], counter: _Counter, indexer: GroupIndexer,
           sidecars: Mapping[str, Mapping[str, Any]], label_len: List[Optional[int]]) -> Optional[Dict[str, Any]]:
    key = sample.get("__key__")
    if "json" not in sample:
        counter.skip("missing_field", key, "no json")
        return None
    ext = find_image(sample)
    if ext is None:
        counter.skip("missing_field", key, "no image (png/jpg/npy)")
        return None
    try:
        meta = json.loads(sample["json"])
    except (ValueError, UnicodeDecodeError) as e:
        counter.skip("bad_json", key, e)
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("attrs", {}) or {}, dict):
        counter.skip("bad_json", key, "json is not {label, attrs, split}")
        return None
    if "label" not in meta:
        counter.skip("missing_field", key, "no label")
        return None
    label = meta["label"]
    if isinstance(label, bool) or not (isinstance(label, int) or (
            isinstance(label, list) and label and all(isinstance(v, int) and not isinstance(v, bool) for v in label))):
        counter.skip("bad_label", key, f"label {label!r}")
        return None
    n = len(label) if isinstance(label, list) else None
    if label_len[0] is None and label_len[1] is None:
        label_len[1] = n if n is not None else -1
    expected = label_len[0] if label_len[0] is not None else label_len[1]
    if (n if n is not None else -1) != expected:
        counter.skip("bad_label", key, f"label {label!r} does not match the dataset's label shape")
        return None
    attrs = dict(meta.get("attrs") or {})
    if sidecars and key in sidecars:
        attrs.update(sidecars[key])
    return {"key": key, "label": label, "attrs": attrs, "group": indexer.index(attrs), "ext": ext,
            "bytes": sample[ext]}


def _decode(rec: Dict[str, Any], counter: _Counter, grayscale: str) -> Optional[torch.Tensor]:
    try:
        return to_channels(decode_array(rec["bytes"], rec["ext"]), grayscale)
    except DecodeError as e:
        counter.skip("bad_image", rec["key"], e)
        return None


def _collate(recs: List[Dict[str, Any]], images: List[torch.Tensor]) -> Dict[str, Any]:
    return {"image": torch.stack(images), "label": torch.tensor([r["label"] for r in recs], dtype=torch.long),
            "group": torch.tensor([r["group"] for r in recs], dtype=torch.long),
            "attrs": [r["attrs"] for r in recs], "key": [r["key"] for r in recs]}


def _shuffle(src: Iterator[Dict[str, Any]], bufsize: int, rng: random.Random) -> Iterator[Dict[str, Any]]:
    buf: List[Dict[str, Any]] = []
    for item in src:
        if len(buf) < bufsize:
            buf.append(item)
            if len(buf) < bufsize:
                continue
        i = rng.randrange(len(buf))
        out, buf[i] = buf[i], buf[-1]
        buf.pop()
        yield out
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------- the streams
class _Stream(IterableDataset):
    def __init__(self, urls: List[str], train: bool, batch_size: int, transform: ImageTransform, grayscale: str,
                 indexer: GroupIndexer, sidecars: Mapping[str, Mapping[str, Any]], rank: int, world: int,
                 seed: int = 0, epoch: int = 0, num_batches: int = 0, skip_batches: int = 0,
                 shuffle_buffer: int = 1000, accept: Optional[List[float]] = None, label_len: Optional[int] = None):
        super().__init__()
        self.urls, self.train, self.batch_size = list(urls), train, int(batch_size)
        self.transform, self.grayscale, self.indexer, self.sidecars = transform, grayscale, indexer, sidecars
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, epoch
        self.num_batches, self.skip_batches, self.shuffle_buffer = num_batches, skip_batches, shuffle_buffer
        self.accept, self.label_len = accept, label_len

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        wi = get_worker_info()
        pw, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        counter = _Counter()
        produced = 0
        if self.train:
            logical = (pw + self.skip_batches) % nw
            gen = self._train(logical, nw, counter)
        else:
            logical = pw
            gen = self._eval(logical, nw, counter)
        for batch in gen:
            produced += len(batch["key"])
            yield batch
        yield {STATS_MARKER: dict(counter.counts), "worker": logical, "samples": produced}

    # ---- training: resampled shards, acceptance by group weight, shuffle buffer, bounded length
    def _train(self, L: int, nw: int, counter: _Counter) -> Iterator[Dict[str, Any]]:
        nb, k = self.num_batches, self.skip_batches
        my_batches = nb // nw + (1 if L < nb % nw else 0)
        my_skip = min(my_batches, (k - L + nw - 1) // nw if k > L else 0)
        if my_batches == 0:
            return
        base = (self.seed, self.epoch, self.rank, L)
        shards = wds.ResampledShards(self.urls, seed=_mix("shards", *base), worker_seed=_no_worker_seed,
                                     deterministic=True)
        limit = 20 * len(self.urls) + 20

        def shard_iter() -> Iterator[Dict[str, Any]]:
            opened = 0
            for d in shards:
                counter.shard_seq += 1
                opened += 1
                if counter.parsed == 0 and opened > limit:
                    raise RuntimeError(f"training stream: {opened} shard reads gave no usable sample "
                                       f"(skips so far: {counter.counts}); check {self.urls[:3]}...")
                yield d

        label_len: List[Optional[int]] = [self.label_len, None]
        rng_accept = random.Random(_mix("accept", *base))
        accept = self.accept

        def records() -> Iterator[Dict[str, Any]]:
            for sample in wds.tarfile_samples(shard_iter(), handler=counter.handler):
                rec = _parse(sample, counter, self.indexer, self.sidecars, label_len)
                if rec is None:
                    continue
                counter.parsed += 1
                if accept is not None and rng_accept.random() >= accept[rec["group"]]:
                    continue
                yield rec

        recs: List[Dict[str, Any]] = []
        imgs: List[torch.Tensor] = []
        b = 0
        for rec in _shuffle(records(), self.shuffle_buffer, random.Random(_mix("shuffle", *base))):
            img = _decode(rec, counter, self.grayscale)
            if img is None:
                continue
            counter.good += 1
            recs.append(rec)
            imgs.append(img)
            if len(recs) == self.batch_size:
                if b >= my_skip:
                    g = torch.Generator().manual_seed(_mix("augment", *base, b))
                    yield _collate(recs, [self.transform(im, g) for im in imgs])
                b += 1
                recs, imgs = [], []
                if b >= my_batches:
                    return

    # ---- eval: each sample exactly once over ranks x workers, fixed order
    def _assignment(self, slot: int, total: int) -> List[Tuple[str, int, int]]:
        n = len(self.urls)
        if n >= total:
            return [(u, 0, 1) for i, u in enumerate(self.urls) if i % total == slot]
        i = slot % n
        readers = len(range(i, total, n))
        return [(self.urls[i], slot // n, readers)]

    def _eval(self, L: int, nw: int, counter: _Counter) -> Iterator[Dict[str, Any]]:
        slot, total = self.rank * nw + L, self.world * nw
        label_len: List[Optional[int]] = [self.label_len, None]
        recs: List[Dict[str, Any]] = []
        imgs: List[torch.Tensor] = []
        for url, pos, readers in self._assignment(slot, total):
            counter.count_tar = pos == 0  # a shard shared by several readers is reported once
            counter.shard_seq += 1
            for j, sample in enumerate(wds.tarfile_samples([dict(url=url)], handler=counter.handler)):
                if j % readers != pos:
                    continue
                rec = _parse(sample, counter, self.indexer, self.sidecars, label_len)
                if rec is None:
                    continue
                img = _decode(rec, counter, self.grayscale)
                if img is None:
                    continue
                try:
                    img = self.transform(img)
                except (RuntimeError, ValueError) as e:
                    counter.skip("bad_image", rec["key"], e)
                    continue
                recs.append(rec)
                imgs.append(img)
                if len(recs) == self.batch_size:
                    yield _collate(recs, imgs)
                    recs, imgs = [], []
        if recs:
            yield _collate(recs, imgs)


class Loader:
    """Iterable of batches ``{image, label, group, attrs, key}``; ``.stats`` holds the skip counts of the
    current/last pass (complete when the pass ends), ``.samples`` the samples yielded."""

    def __init__(self, dataset: _Stream, num_workers: int, name: str, indexer: GroupIndexer,
                 datasheet: Optional[Mapping[str, Any]] = None, num_batches: Optional[int] = None,
                 expected_samples: Optional[int] = None):
        self.dataset, self.num_workers, self.name = dataset, int(num_workers), name
        self.expected_samples = expected_samples
        self.indexer, self.datasheet, self.num_batches = indexer, datasheet, num_batches
        self.stats = SkipCounts()
        self.samples = 0

    @property
    def group_names(self) -> List[str]:
        return self.indexer.names

    @property
    def num_groups(self) -> int:
        return self.indexer.num_groups

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError(f"{self.name}: the eval reader has no fixed length")
        return self.num_batches

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self.stats = stats = SkipCounts()
        self.samples = 0
        nw = self.num_workers
        dl = DataLoader(self.dataset, batch_size=None, num_workers=nw, persistent_workers=False,
                        prefetch_factor=2 if nw > 0 else None, pin_memory=False)
        batches = markers = 0
        for item in dl:
            if STATS_MARKER in item:
                stats.add(item[STATS_MARKER])
                markers += 1
                continue
            batches += 1
            self.samples += len(item["key"])
            yield item
        if self.expected_samples is not None:  # an eval pass over a whole split: did every listed sample show up?
            seen = self.samples + sum(v for k, v in stats.items() if k != "bad_tar")
            if seen < self.expected_samples:
                stats["missing_samples"] = self.expected_samples - seen
        level = logging.WARNING if stats.total else logging.INFO
        log.log(level, "data %s: %d samples in %d batches from %d worker(s); skipped %d %s", self.name,
                self.samples, batches, markers, stats.total, dict(stats) if stats else "")


# --------------------------------------------------------------------------- public entry points
def _label_len(datasheet: Optional[Mapping[str, Any]]) -> Optional[int]:
    lab = (datasheet or {}).get("label") or {}
    if lab.get("type") == "multilabel":
        return int(lab["num_classes"])
    if lab.get("type") in ("binary", "multiclass"):
        return -1
    return None


def _context(cfg: Any) -> Tuple[Optional[Dict[str, Any]], Dict[str, Dict[str, Any]], GroupIndexer]:
    sidecars = load_sidecars(list(cfg.data.sidecars or []))
    sheet = datasheet_with_sidecars(read_datasheet(cfg.data.root), sidecars)
    return sheet, sidecars, group_indexer(cfg, sheet)


def train_loader(cfg: Any, epoch: int = 0, skip_batches: int = 0) -> Loader:
    """Resampled, shuffled training batches: ``cfg.data.epoch_samples`` per epoch over all ranks (whole batches
    per rank), deterministic given (data.seed, epoch, rank, worker); ``skip_batches`` resumes mid-epoch."""
    from agglom.config.load import ConfigError

    d = dist_info()
    data = cfg.data
    if data.batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {data.batch_size}")
    sheet, sidecars, indexer = _context(cfg)
    per_rank = int(data.epoch_samples) // d.world_size
    nb = max(1, per_rank // int(data.batch_size))
    if skip_batches < 0 or skip_batches > nb:
        raise ValueError(f"skip_batches={skip_batches} outside the epoch's {nb} batches")
    ds = _Stream(shard_urls(cfg, data.train_split), True, data.batch_size, build_transform(cfg, train=True),
                 data.grayscale, indexer, sidecars, d.rank, d.world_size, seed=int(data.seed), epoch=int(epoch),
                 num_batches=nb, skip_batches=int(skip_batches), shuffle_buffer=int(data.shuffle_buffer),
                 accept=acceptance(cfg, indexer, sheet, sidecars), label_len=_label_len(sheet))
    return Loader(ds, data.num_workers, f"train[epoch {epoch}]", indexer, sheet, num_batches=nb - skip_batches)


def eval_loader(cfg: Any, split: str, batch_size: Optional[int] = None, whole: bool = False) -> Loader:
    """Every sample of ``split`` exactly once over ranks and workers, in a fixed order, without augmentation.
    ``whole``: this process reads the whole split whatever its rank (a computation every rank repeats)."""
    d = dist_info()
    if whole:
        from agglom.dist import DistInfo

        d = DistInfo(rank=0, world_size=1, local_rank=d.local_rank)
    data = cfg.data
    sheet, sidecars, indexer = _context(cfg)
    ds = _Stream(shard_urls(cfg, split), False, int(batch_size or data.batch_size), build_transform(cfg, train=False),
                 data.grayscale, indexer, sidecars, d.rank, d.world_size, label_len=_label_len(sheet))
    expected = None
    pattern = _cfg_get(data, "shards")
    if d.world_size == 1 and not (pattern and ("{split}" in pattern or split == data.train_split)):
        expected = ((sheet or {}).get("splits", {}).get(split) or {}).get("samples")
    return Loader(ds, data.num_workers, f"eval[{split}]", indexer, sheet, expected_samples=expected)


__all__ = ["train_loader", "eval_loader", "Loader", "SkipCounts", "shard_urls", "load_sidecars", "group_indexer",
           "datasheet_with_sidecars", "acceptance", "group_counts", "STATS_MARKER", "SKIP_REASONS"]
