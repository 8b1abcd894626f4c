"""Shard lists and shard reading, shared by every reader (train, eval, cache, curate).

:func:`resolve_shards` turns ``data.shards`` (brace pattern, ``{split}`` substituted, shell globs allowed) or
``<data.root>/<split>/*.tar`` into the files to read and the ones that are missing; :func:`shard_urls` refuses
missing files unless ``data.allow_missing_shards`` is set (a missing shard is not a corrupt one).

:func:`read_shard` is webdataset's tar expansion (over :mod:`agglom.data.tarstream`'s header parser, ~5x faster
than :mod:`tarfile` on small members) with the grouping done here, so that what webdataset would let
through silently is counted: a key repeated inside a shard (the later copies are dropped: ``duplicate_key``), a
member repeated inside one sample (the sample is dropped: ``duplicate_member``), a shard with no member
(``empty_shard``) and a shard that cannot be read to its end (``bad_tar``, with the error; the samples before the
damage are kept).
"""
from __future__ import annotations

import glob
import os
import re
import tarfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import braceexpand
from webdataset.tariterators import base_plus_ext

from agglom.config.access import cfg_get
from agglom.data.counts import SkipCounts
from agglom.data.tarstream import members as tar_members
from agglom.data.urls import check_url, is_remote, local_path

_GLOB = re.compile(r"[*?\[]")
MAX_SHARDS = 100_000  # a brace range wider than this is refused before it is walked (and each name checked)
_META = re.compile(r"__[^/]*__($|/)")


def shard_pattern(cfg: Any, split: str) -> Optional[str]:
    """``data.shards`` with ``{split}`` filled in, when it applies to ``split`` (a pattern without ``{split}``
    is the training split's only); None: the folder layout ``<data.root>/<split>/*.tar``."""
    data = cfg.data
    pattern = cfg_get(data, "shards")
    if pattern and ("{split}" in pattern or split == data.train_split):
        return pattern.replace("{split}", split)
    return None


def training_splits(cfg: Any) -> List[str]:
    """The splits the distillation stream reads: ``data.train_split`` and then ``data.distill_splits`` (label-free
    images; a split listed twice, or the train split listed again, is read once)."""
    out = [cfg.data.train_split]
    for s in list(cfg_get(cfg.data, "distill_splits") or []):
        if str(s) not in out:
            out.append(str(s))
    return out


def data_home(cfg: Any) -> Path:
    """The folder a dataset's own files (``dataset.json``, sidecars) belong to: ``data.root``; with ``data.shards``
    the folder above the split folders (the pattern before ``{split}``), else the shards' folder or, when that has
    no ``dataset.json`` but its parent does (``<root>/<split>/x.tar``), the parent — never ``data.root``, so a stray
    ``data/synth`` in the working directory cannot lend its datasheet to other shards."""
    pattern = cfg_get(cfg.data, "shards")
    if not pattern or is_remote(pattern):
        return Path(cfg.data.root)
    split_dirs = "{split}" in pattern
    head = pattern.split("{split}")[0] if split_dirs else os.path.dirname(pattern) + "/"
    head = head[: min([head.index(c) for c in "{*?[" if c in head] + [len(head)])]
    home = Path(head if head.endswith("/") else os.path.dirname(head) or ".")
    if not split_dirs and not (home / "dataset.json").is_file() and (home.parent / "dataset.json").is_file():
        return home.parent
    return home


def dataset_datasheet(cfg: Any) -> Optional[Dict[str, Any]]:
    """The datasheet of the configured data (``<data_home>/dataset.json``), or None (e.g. web-style shards)."""
    from agglom.data.writer import read_datasheet

    return read_datasheet(data_home(cfg))


def resolve_shards(cfg: Any, split: str) -> Tuple[List[str], List[str]]:
    """(shard files to read, missing ones) of a split. Globs in ``data.shards`` are expanded (sorted); a glob that
    matches nothing, or a brace-expanded file that does not exist, is missing."""
    from agglom.config.load import ConfigError

    pattern = shard_pattern(cfg, split)
    if pattern is None:
        folder = Path(cfg.data.root) / split
        urls = sorted(glob.glob(os.path.join(glob.escape(str(folder)), "*.tar")))  # `[1]` in a folder name is a name
        if not urls:
            raise ConfigError(f"no shards for split {split!r}: {folder}/*.tar is empty "
                              f"(write a dataset with `agglom data synth` or `agglom data pack`, or set data.root "
                              f"or data.shards)")
        return urls, []
    present, missing = [], []
    if _range_size(pattern) > MAX_SHARDS:  # braceexpand lists a range whole before yielding its first name
        raise ConfigError(f"data.shards={pattern[:120]!r} names more than {MAX_SHARDS:,} shard files; a range that "
                          "wide is a typo (a dataset that large is given as several patterns or folders)")
    for u in braceexpand.braceexpand(pattern):
        check_url(u)
        if is_remote(u):
            present.append(u)
        elif os.path.exists(local_path(u)):  # a file whose name has `[` or `*` is that file, not a pattern
            present.append(local_path(u))
        elif _GLOB.search(u):
            found = sorted(glob.glob(local_path(u)))
            (present.extend(found) if found else missing.append(u))
        else:
            missing.append(u)
    if not present:
        raise ConfigError(f"data.shards={pattern!r}: none of its {len(missing)} shard file(s) exists "
                          f"(e.g. {missing[0]}); brace ranges ({{000000..000009}}) and globs (*.tar) are expanded")
    return present, missing


def _range_size(pattern: str) -> int:
    """About how many names a brace pattern multiplies out to: its ``{a..b}`` ranges and ``{x,y}`` lists."""
    size = 1
    for a, b in re.findall(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?\d+)?\}", pattern):
        size *= abs(int(b) - int(a)) + 1
    for items in re.findall(r"\{([^{}]*,[^{}]*)\}", pattern):
        size *= items.count(",") + 1
    return size


def shard_urls(cfg: Any, split: str) -> List[str]:
    """The shard files of a split; a missing one is refused (ConfigError, naming them) unless
    ``data.allow_missing_shards=true``, which reads the rest and counts each missing file as ``missing_shard``."""
    from agglom.config.load import ConfigError

    present, missing = resolve_shards(cfg, split)
    if missing and not cfg_get(cfg.data, "allow_missing_shards", False):
        shown = ", ".join(missing[:5]) + (f", ... ({len(missing) - 5} more)" if len(missing) > 5 else "")
        raise ConfigError(f"data.shards={shard_pattern(cfg, split)!r}: {len(missing)} of {len(missing) + len(present)} "
                          f"shard files do not exist: {shown}. Fix the pattern, or set data.allow_missing_shards=true "
                          f"to go on without them (each is then counted as missing_shard)")
    return present


def missing_shards(cfg: Any, split: str) -> List[str]:
    """The missing files of a split's pattern (empty for the folder layout)."""
    return resolve_shards(cfg, split)[1]


def shard_id(url: str) -> str:
    """How a shard is named in counts: its file name (its parent folder too, which holds the split)."""
    p = Path(url)
    return f"{p.parent.name}/{p.name}" if p.parent.name else p.name


def inspect_shards(urls: List[str]) -> List[Tuple[str, str, str]]:
    """(url, reason, detail) for the local shards whose damage shows without reading them: 0 bytes or only zero
    blocks (``empty_shard``), a size that is not a whole number of 512-byte tar blocks (``bad_tar``: truncated).
    Every reader counts these up front, so they are counted even when a training run never draws the shard."""
    out = []
    for u in urls:
        if is_remote(u):
            continue
        try:
            size = os.path.getsize(u)
        except OSError as e:
            out.append((u, "bad_tar", f"cannot stat: {e}"))
            continue
        if size == 0:
            out.append((u, "empty_shard", "0 bytes"))
        elif size % 512:
            out.append((u, "bad_tar", f"{size} bytes is not a whole number of 512-byte tar blocks: truncated"))
        elif size <= 20 * 512:
            with open(u, "rb") as f:
                if not f.read(size).strip(b"\0"):
                    out.append((u, "empty_shard", "a tar archive with no members"))
    return out


def _finish(sample: Dict[str, Any], counts: SkipCounts, sid: str) -> Optional[Dict[str, Any]]:
    if sample.pop("__dup_key__", None) is not None:
        counts.skip("duplicate_key", f"{sid}:{sample['__key__']}@{sample['__first__']}",
                    "the key already appeared earlier in this shard")
        return None
    dup = sample.pop("__dup_member__", None)
    if dup is not None:
        counts.skip("duplicate_member", f"{sid}:{sample['__key__']}", f"two '.{dup}' members")
        return None
    sample.pop("__first__", None)
    return sample


def read_shard(url: str, counts: SkipCounts, select: Optional[Any] = None) -> Iterator[Dict[str, Any]]:
    """Samples of one shard: ``{"__key__", "__url__", "<ext>": bytes, ...}``, in order; problems go to ``counts``.

    ``select(member name) -> bool`` reads only some members (e.g. json only)."""
    sid = shard_id(url)
    current: Optional[Dict[str, Any]] = None
    seen: set = set()
    members = 0
    error: Optional[BaseException] = None
    out: List[Dict[str, Any]] = []
    check_url(url)
    try:
        if is_remote(url):
            from webdataset.gopen import gopen

            stream = gopen(url)
        else:
            stream = open(local_path(url), "rb")  # noqa: SIM115 - closed below
    except Exception as e:  # noqa: BLE001 - unreadable file or failed pipe: the shard is skipped and named
        counts.skip("bad_tar", sid, f"cannot open: {type(e).__name__}: {e}")
        return
    try:
        for name, regular, data in tar_members(stream):
            if not regular or _META.match(name):
                continue
            prefix, suffix = base_plus_ext(name)
            if prefix is None or (select is not None and not select(name)):
                continue
            members += 1
            if current is None or prefix != current["__key__"]:
                if current is not None:
                    out.append(current)
                current = {"__key__": prefix, "__url__": url, "__first__": members}
                if prefix in seen:
                    current["__dup_key__"] = True
                seen.add(prefix)
            suffix = suffix.lower()
            if suffix in current:
                current["__dup_member__"] = suffix
            else:
                current[suffix] = data
            while out:  # yield complete samples as soon as the next one starts
                done = _finish(out.pop(0), counts, sid)
                if done is not None:
                    yield done
    except (tarfile.TarError, OSError, EOFError, ValueError, UnicodeDecodeError) as e:
        error = e
    finally:
        try:
            stream.close()
        except Exception:  # noqa: BLE001 - closing a failed pipe
            pass
    if current is not None:
        done = _finish(current, counts, sid)
        if done is not None:
            yield done
    if error is not None:
        counts.skip("bad_tar", sid, f"{type(error).__name__}: {error} (read {members} members before it)")
    elif members == 0 and select is None:
        counts.skip("empty_shard", sid, "no members")


__all__ = ["data_home", "dataset_datasheet", "resolve_shards", "shard_urls", "missing_shards", "shard_pattern", "shard_id", "read_shard",
           "inspect_shards"]
