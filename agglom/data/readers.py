"""WebDataset readers: a resampled, shuffled, resumable training stream and an exact single-pass eval reader.

Both run the same stages inside DataLoader workers (batching included; the loader has ``batch_size=None``):
shard reading (:mod:`agglom.data.shards`) -> json/label/attrs parsing (+ sidecars, group index) -> [train: group
acceptance sampling, shuffle buffer] -> decode and checks -> transform -> batch (:mod:`agglom.data.pipeline`).
Every bad input is skipped and counted by reason (:mod:`agglom.data.counts`); each batch carries what its worker
counted since its previous batch, and a final marker item the rest, so the :class:`Loader`'s ``.stats`` covers
every batch it has yielded — also when training stops in the middle of an epoch.

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

import hashlib
import logging
import random
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from agglom.config.access import cfg_get
from agglom.data.counts import DATA_COUNTS, NOTE_REASONS, SKIP_REASONS, SkipCounts
from agglom.data.groups import GroupIndexer
from agglom.data.pipeline import collate, load_image, load_mask, parse, transform
from agglom.data.sampling import acceptance, group_counts
from agglom.data.shards import (
    dataset_datasheet,
    inspect_shards,
    missing_shards,
    read_shard,
    shard_id,
    shard_pattern,
    shard_urls,
    training_splits,
)
from agglom.data.sidecars import datasheet_with_sidecars, load_sidecars
from agglom.data.transforms import ImageTransform, build_transform
from agglom.dist import dist_info

log = logging.getLogger("agglom.data")
STATS_MARKER = "__agglom_stats__"


def _mix(*parts: Any) -> int:
    """A 63-bit seed from any parts (stable across processes and Python hash randomisation)."""
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _no_worker_seed() -> int:
    return 0


class _Counter(SkipCounts):
    """A worker's counts (what it sends with its next batch) and how many samples parsed so far."""

    def __init__(self) -> None:
        super().__init__()
        self.parsed = 0  # samples whose metadata parsed (before group acceptance and shuffling)


# --------------------------------------------------------------------------- shards, group indexer
def group_indexer(cfg: Any, datasheet: Optional[Mapping[str, Any]] = None, by: Optional[str] = None) -> GroupIndexer:
    """The GroupIndexer for cfg.groups over the dataset's datasheet (+ sidecars); ConfigError if unresolvable."""
    from agglom.config.load import ConfigError

    if datasheet is None:
        datasheet = datasheet_with_sidecars(dataset_datasheet(cfg), load_sidecars(list(cfg.data.sidecars or [])))
    groups = cfg_get(cfg, "groups")
    try:
        return GroupIndexer(list(cfg_get(groups, "specs", [])), by=by or cfg_get(groups, "by", "site"),
                            datasheet=datasheet)
    except ValueError as e:
        raise ConfigError(f"groups.by={by or cfg_get(groups, 'by', 'site')!r}: {e}") from e


def _record_bytes(rec: Dict[str, Any]) -> int:
    return len(rec.get("bytes") or b"") + len(rec.get("mask_bytes") or b"")


def _shuffle(src: Iterator[Dict[str, Any]], bufsize: int, rng: random.Random,
             max_bytes: int = 0) -> Iterator[Dict[str, Any]]:
    """A shuffle buffer of at most ``bufsize`` records and (``max_bytes`` > 0) at most that many encoded bytes, so a
    worker's memory stays bounded when the images are large (1000 encoded 1024-px 16-bit PNGs are ~2 GB). Which
    records are buffered depends only on the stream, so the order stays a pure function of the seeds (exact resume);
    where the byte bound is never reached (small images) the order is the count-bounded buffer's."""
    buf: List[Dict[str, Any]] = []
    held = 0
    for item in src:
        buf.append(item)
        held += _record_bytes(item)
        while buf and (len(buf) >= bufsize or (max_bytes and held >= max_bytes)):
            i = rng.randrange(len(buf))
            out, buf[i] = buf[i], buf[-1]
            buf.pop()
            held -= _record_bytes(out)
            yield out
    rng.shuffle(buf)
    yield from buf


# --------------------------------------------------------------------------- the streams
class _Stream(IterableDataset):
    def __init__(self, urls: List[str], train: bool, batch_size: int, transform: ImageTransform, grayscale: str,
                 indexer: GroupIndexer, sidecars: Mapping[str, Mapping[str, Any]], rank: int, world: int,
                 seed: int = 0, epoch: int = 0, num_batches: int = 0, skip_batches: int = 0,
                 shuffle_buffer: int = 1000, accept: Optional[List[float]] = None, label_len: Optional[int] = None,
                 min_side: int = 1, masks: bool = False, attach: Optional[Any] = None, shuffle_mb: float = 0):
        super().__init__()
        self.urls, self.train, self.batch_size = list(urls), train, int(batch_size)
        self.transform, self.grayscale, self.indexer, self.sidecars = transform, grayscale, indexer, sidecars
        self.rank, self.world, self.seed, self.epoch = rank, world, seed, epoch
        self.num_batches, self.skip_batches, self.shuffle_buffer = num_batches, skip_batches, shuffle_buffer
        self.accept, self.label_len, self.min_side = accept, label_len, int(min_side)
        self.masks = bool(masks)  # read each sample's mask.png (IGNORE where none) and batch it as "mask"
        self.attach = attach  # called on each batch in the worker (e.g. cached teacher features)
        self.shuffle_bytes = int(float(shuffle_mb) * 2 ** 20)  # the shuffle buffer's bound in encoded bytes (0: none)

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
            batch[DATA_COUNTS] = counter.take()  # what this worker skipped since its previous batch
            yield batch
        yield {STATS_MARKER: counter.take(), "worker": logical, "samples": produced}

    def _image(self, rec: Dict[str, Any], counter: _Counter) -> Optional[torch.Tensor]:
        img = load_image(rec, counter, self.grayscale, self.min_side)
        if img is not None and self.masks:
            load_mask(rec, counter, img)
        return img

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
        label_len: List[Optional[int]] = [self.label_len, None]
        rng_accept = random.Random(_mix("accept", *base))
        accept = self.accept

        def records() -> Iterator[Dict[str, Any]]:
            for opened, d in enumerate(shards, 1):
                if counter.parsed == 0 and opened > limit:
                    raise RuntimeError(f"training stream: {opened} shard reads gave no usable sample "
                                       f"(skipped: {counter.describe()}); check {self.urls[:3]}...")
                for sample in read_shard(d["url"], counter):
                    rec = parse(sample, counter, self.indexer, self.sidecars, label_len)
                    if rec is None:
                        continue
                    counter.parsed += 1
                    if accept is not None and rng_accept.random() >= accept[rec["group"]]:
                        continue
                    yield rec

        recs: List[Dict[str, Any]] = []
        imgs: List[torch.Tensor] = []
        b = 0
        for rec in _shuffle(records(), self.shuffle_buffer, random.Random(_mix("shuffle", *base)), self.shuffle_bytes):
            img = self._image(rec, counter)
            if img is None:
                continue
            recs.append(rec)
            imgs.append(img)
            if len(recs) == self.batch_size:
                if b >= my_skip:
                    g = torch.Generator().manual_seed(_mix("augment", *base, b))
                    out = [(r, transform(r, im, self.transform, counter, g)) for r, im in zip(recs, imgs)]
                    kept = [(r, im) for r, im in out if im is not None]
                    if kept:
                        batch = collate([r for r, _ in kept], [im for _, im in kept], self.masks)
                        yield batch if self.attach is None else self.attach(batch)
                else:
                    counter.take()  # a resumed reader drops what the run counted before its checkpoint
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
            for j, sample in enumerate(read_shard(url, counter)):
                if j % readers != pos:
                    continue
                rec = parse(sample, counter, self.indexer, self.sidecars, label_len)
                img = None if rec is None else self._image(rec, counter)
                img = None if img is None else transform(rec, img, lambda im, g, **kw: self.transform(im, **kw),
                                                         counter)
                if img is None:
                    continue
                recs.append(rec)
                imgs.append(img)
                if len(recs) == self.batch_size:
                    yield collate(recs, imgs, self.masks)
                    recs, imgs = [], []
        if recs:
            yield collate(recs, imgs, self.masks)


def _drop_rows(batch: Dict[str, Any], keep: List[int]) -> Dict[str, Any]:
    idx = torch.tensor(keep, dtype=torch.long)
    out = {"image": batch["image"][idx], "label": batch["label"][idx], "group": batch["group"][idx],
           "attrs": [batch["attrs"][i] for i in keep], "key": [batch["key"][i] for i in keep]}
    if "mask" in batch:
        out["mask"] = batch["mask"][idx]
    return out


class Loader:
    """Iterable of batches ``{image, label, group, attrs, key}``.

    ``.stats`` (a :class:`~agglom.data.counts.SkipCounts`) holds what the current/last pass skipped or noted, up
    to and including the batch just yielded (the rest arrives when the pass ends); ``.samples`` the samples
    yielded; ``.missing`` shard files the pattern names that do not exist (``data.allow_missing_shards``).
    An eval loader (``unique_keys``) also drops a key it has already yielded (``duplicate_key``), so a sample
    repeated across shards or workers is used once."""

    def __init__(self, dataset: _Stream, num_workers: int, name: str, indexer: GroupIndexer,
                 datasheet: Optional[Mapping[str, Any]] = None, num_batches: Optional[int] = None,
                 expected_samples: Optional[int] = None, missing: Sequence[str] = (), unique_keys: bool = False):
        self.dataset, self.num_workers, self.name = dataset, int(num_workers), name
        self.expected_samples, self.missing, self.unique_keys = expected_samples, list(missing), unique_keys
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

    def _unique(self, batch: Dict[str, Any], seen: Dict[str, int]) -> Optional[Dict[str, Any]]:
        keep = []
        for i, k in enumerate(batch["key"]):
            seen[k] = seen.get(k, 0) + 1
            if seen[k] == 1:
                keep.append(i)
            else:
                self.stats.skip("duplicate_key", f"{k}#{seen[k]}", "the key was already read from another shard")
        if len(keep) == len(batch["key"]):
            return batch
        return _drop_rows(batch, keep) if keep else None

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        self.stats = stats = SkipCounts()
        for url in self.missing:
            stats.skip("missing_shard", shard_id(url), "named by data.shards but does not exist")
        for url, reason, detail in inspect_shards(self.dataset.urls):
            stats.skip(reason, shard_id(url), detail)
        self.samples = 0
        nw = self.num_workers
        dl = DataLoader(self.dataset, batch_size=None, num_workers=nw, persistent_workers=False,
                        prefetch_factor=2 if nw > 0 else None, pin_memory=False)
        batches = markers = 0
        seen: Dict[str, int] = {}
        for item in dl:
            if STATS_MARKER in item:
                stats.add(item[STATS_MARKER])
                markers += 1
                continue
            stats.add(item.pop(DATA_COUNTS, None))
            if self.unique_keys:
                item = self._unique(item, seen)
                if item is None:
                    continue
            batches += 1
            self.samples += len(item["key"])
            yield item
        if self.expected_samples is not None:  # an eval pass over a whole split: did every listed sample show up?
            seen_n = self.samples + stats.sample_skips
            if seen_n < self.expected_samples:
                stats.missing_samples = self.expected_samples - seen_n
        level = logging.WARNING if stats.total else logging.INFO
        log.log(level, "data %s: %d samples in %d batches from %d worker(s); skipped %d: %s", self.name,
                self.samples, batches, markers, stats.total, stats.describe())


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
    sheet = datasheet_with_sidecars(dataset_datasheet(cfg), sidecars)
    return sheet, sidecars, group_indexer(cfg, sheet)


def train_loader(cfg: Any, epoch: int = 0, skip_batches: int = 0, masks: bool = False,
                 attach: Optional[Any] = None) -> Loader:
    """Resampled, shuffled training batches: ``cfg.data.epoch_samples`` per epoch over all ranks (whole batches
    per rank), deterministic given (data.seed, epoch, rank, worker); ``skip_batches`` resumes mid-epoch.
    ``masks``: batches also hold ``"mask"`` (long [B, H, W], the augmentation's geometry applied; IGNORE where a
    sample has none); the images and their augmentation are the same either way. ``attach``: a picklable callable
    each batch goes through in its worker (the task's :class:`~agglom.cache.reader.WorkerCacheRead`)."""
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
    splits = training_splits(cfg)
    urls = [u for split in splits for u in shard_urls(cfg, split)]
    ds = _Stream(urls, True, data.batch_size, build_transform(cfg, train=True),
                 data.grayscale, indexer, sidecars, d.rank, d.world_size, seed=int(data.seed), epoch=int(epoch),
                 num_batches=nb, skip_batches=int(skip_batches), shuffle_buffer=int(data.shuffle_buffer),
                 accept=acceptance(cfg, indexer, sheet, sidecars), label_len=_label_len(sheet),
                 min_side=int(cfg_get(data, "min_image_side", 1)), masks=masks, attach=attach,
                 shuffle_mb=float(cfg_get(data, "shuffle_buffer_mb", 0)))
    return Loader(ds, data.num_workers, f"train[epoch {epoch}]", indexer, sheet, num_batches=nb - skip_batches,
                  missing=[m for split in splits for m in missing_shards(cfg, split)])


def eval_loader(cfg: Any, split: str, batch_size: Optional[int] = None, whole: bool = False,
                masks: bool = False) -> Loader:
    """Every sample of ``split`` exactly once over ranks and workers, in a fixed order, without augmentation; a
    key repeated in the split is read once (``duplicate_key``). ``whole``: this process reads the whole split
    whatever its rank (a computation every rank repeats). ``masks``: batches also hold ``"mask"`` (long
    [B, H, W] at the image size, nearest-neighbour resized; IGNORE where a sample has none)."""
    d = dist_info()
    if whole:
        from agglom.dist import DistInfo

        d = DistInfo(rank=0, world_size=1, local_rank=d.local_rank)
    data = cfg.data
    sheet, sidecars, indexer = _context(cfg)
    urls = shard_urls(cfg, split)
    ds = _Stream(urls, False, int(batch_size or data.batch_size), build_transform(cfg, train=False),
                 data.grayscale, indexer, sidecars, d.rank, d.world_size, label_len=_label_len(sheet),
                 min_side=int(cfg_get(data, "min_image_side", 1)), masks=masks)
    expected = None
    if d.world_size == 1 and shard_pattern(cfg, split) is None:
        expected = ((sheet or {}).get("splits", {}).get(split) or {}).get("samples")
    return Loader(ds, data.num_workers, f"eval[{split}]", indexer, sheet, expected_samples=expected,
                  missing=missing_shards(cfg, split), unique_keys=True)


__all__ = ["train_loader", "eval_loader", "Loader", "SkipCounts", "shard_urls", "load_sidecars", "group_indexer",
           "datasheet_with_sidecars", "acceptance", "group_counts", "STATS_MARKER", "SKIP_REASONS", "NOTE_REASONS",
           "DATA_COUNTS"]
