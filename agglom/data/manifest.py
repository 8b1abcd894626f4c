"""What a dataset write put in its output folder, so that ``force=true`` removes that and nothing else, and a write
that fails part-way leaves nothing behind.

Every `agglom data synth | pack` (and every :class:`agglom.data.writer.DatasetWriter`) writes through a
:class:`DatasetOutput`: before a file or folder is created it is listed in ``<out>/agglom-manifest.json``
(``{"schema": "agglom.manifest/1", "tool", "complete", "pid", "host", "files", "folders"}``, written atomically), and
the manifest is marked complete when the write ends. Then:

- ``force=true`` removes the files the manifest lists (with their ``.tmp`` siblings), the folders it lists once
  they are empty, and the manifest, and says on stdout what it removed and what it kept. A file agglom did not
  write (a README, a ``backups/`` folder, a sidecar from `agglom data join`) is never removed.
- A dataset folder written before manifests existed is recognised by its datasheet: the datasheet's own files
  (``dataset.json``, ``<split>/<split>-NNNNNN.tar`` up to the shard count it records, the twin it names) count
  as agglom's; nothing else does.
- Dataset files agglom has no record of (a ``dataset.json`` or ``.tar`` shards the manifest or datasheet does not
  list, at the top or one folder down, where a reader would mix them into the data) make the write refuse, with or
  without ``force``, naming them: the user moves them out or picks another folder.
- A write that fails (an exception, a full disk, Ctrl-C) removes what it listed; if even that is cut short, the
  manifest stays ``complete: false`` and the next write into the folder removes the leftovers itself.

Nothing is deleted or written outside the folder (:mod:`agglom.data.paths`). The folder given as ``out=`` is
resolved once: when it is itself a symbolic link (or lies under one) the user named it, so agglom follows it, and
from then on works in the resolved folder. Below it, every path agglom is about to delete or write (a listed file,
its ``.tmp``, a split folder, the manifest) must have no symbolic link on the way and resolve inside that folder; a
link there (``val -> ~/.ssh``, a shard that links elsewhere) is refused with one line naming the link and its target,
before anything is removed. Manifest entries that are absolute or hold '..' are ignored.

An ``OSError`` while writing becomes a one-line :class:`agglom.errors.ReadableError` (:func:`write_failure`): a
full disk, a read-only folder.
"""
from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import socket
from pathlib import Path
from typing import Any, List, Optional, Sequence

from agglom.data.jsonfile import read_json, write_json_atomic
from agglom.data.paths import inside, link_message, link_on_the_way, relative_parts, safe, shown

DATASHEET = "dataset.json"
FORMAT = "agglom-shards/1"
MANIFEST = "agglom-manifest.json"
SCHEMA = "agglom.manifest/1"
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
MAX_LISTING_BYTES = 256 << 20  # a manifest or datasheet: ~100 bytes a shard, so millions of shards fit


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def write_failure(e: OSError, where: os.PathLike, note: str = "") -> Exception:
    """A one-line ReadableError for an OSError met while writing ``where``: a full disk, a folder without write
    permission (or on a read-only file system), anything else by its system message."""
    from agglom.errors import ReadableError

    path = Path(getattr(e, "filename", None) or where)
    tail = f" ({note})" if note else ""
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return ReadableError(f"disk full while writing {path}; free space and rerun{tail}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        folder = path if path.is_dir() else path.parent
        return ReadableError(f"cannot write in {folder}: {e.strerror or 'permission denied'}; make it writable or "
                             f"choose another output folder{tail}")
    return ReadableError(f"cannot write {path}: {e.strerror or e}; fix that and rerun{tail}")


# --------------------------------------------------------------------------- what a folder holds
class _Listing:
    """The files and folders agglom wrote in a dataset folder (relative, '/'-separated), from its manifest or, for
    a dataset written before manifests, from its datasheet."""

    def __init__(self, files: Sequence[str], folders: Sequence[str], complete: bool, tool: str,
                 pid: Optional[int] = None, host: str = ""):
        self.files, self.folders = list(files), list(folders)
        self.complete, self.tool, self.pid, self.host = complete, tool, pid, host
        self._owned = set(self.files) | set(self.folders)

    def owns(self, rel: str) -> bool:
        """Whether ``rel`` is listed (a listed file's ``.tmp`` sibling too: a shard being written)."""
        return rel in self._owned or (rel.endswith(".tmp") and rel[:-4] in self._owned)

    def roots(self) -> List[str]:
        """The dataset folders inside (relative; "" for the folder itself): where a datasheet is listed."""
        return [f[: -len(DATASHEET)].rstrip("/") for f in self.files if f == DATASHEET or f.endswith("/" + DATASHEET)]

    def writer_alive(self) -> bool:
        """Whether the write that left this unfinished manifest is still running (another process on this host)."""
        if self.complete or not self.pid or self.host != socket.gethostname() or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except OSError as e:
            return e.errno == errno.EPERM
        return True


def _from_manifest(root: Path) -> Optional[_Listing]:
    path = root / MANIFEST
    if not path.is_file():
        return None
    fix = f"it lists what agglom wrote in {root}; remove what it lists by hand, then the file, or choose another out="
    m = read_json(path, fix=fix, max_bytes=MAX_LISTING_BYTES)
    if not isinstance(m, dict) or m.get("schema") != SCHEMA or not isinstance(m.get("files"), list):
        from agglom.config.load import ConfigError

        raise ConfigError(f"{path}: not an agglom manifest ({SCHEMA}); {fix}")
    files = [str(f) for f in m["files"] if _inside(str(f))]  # never anything outside the folder
    folders = [str(f) for f in m.get("folders") or [] if _inside(str(f))]
    return _Listing(files, folders, bool(m.get("complete")), str(m.get("tool") or "agglom"),
                    m["pid"] if isinstance(m.get("pid"), int) else None,
                    str(m.get("host") or ""))


def _inside(rel: str) -> bool:
    """A manifest entry that stays inside its folder (no absolute path, no '..')."""
    return relative_parts(rel) is not None


def _from_datasheet(root: Path, prefix: str = "") -> Optional[_Listing]:
    """What an agglom datasheet at ``root`` says agglom wrote: itself, its shards (by agglom's names, up to the
    shard count it records) and the twin it names."""
    path = root / DATASHEET
    if not path.is_file():
        return None
    sheet = read_json(path, fix="rewrite it with agglom data pack/synth, or remove it", max_bytes=MAX_LISTING_BYTES)
    if not isinstance(sheet, dict) or sheet.get("format") != FORMAT or not isinstance(sheet.get("splits"), dict):
        return None
    files, folders = [prefix + DATASHEET], []
    for split, info in sheet["splits"].items():
        if _NAME_RE.match(str(split)) and isinstance(info, dict):
            folders.append(prefix + split)
            files += [f"{prefix}{split}/{shard_name(split, i)}" for i in range(int(info.get("shards") or 0))]
    twin = sheet.get("twin")
    if isinstance(twin, str) and _NAME_RE.match(twin) and not prefix:
        sub = _from_datasheet(root / twin, f"{twin}/")
        if sub is not None:
            files, folders = files + sub.files, folders + [twin] + sub.folders
    return _Listing(files, folders, True, "an agglom without manifests (listed from its dataset.json)")


def _unlisted_data(root: Path, listing: Optional[_Listing]) -> List[str]:
    """Dataset files in ``root`` that ``listing`` does not hold: a dataset.json, or .tar shards / a dataset.json
    one folder down, in each dataset folder the listing has (a reader would take them for part of the data)."""
    out: List[str] = []
    roots = listing.roots() if listing is not None else [""]
    for r in roots or [""]:
        base = root / r if r else root
        pre = f"{r}/" if r else ""
        if (base / DATASHEET).exists() and not (listing and listing.owns(pre + DATASHEET)):
            out.append(pre + DATASHEET)
        for sub in sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink()) if base.is_dir() else []:
            for f in sorted(sub.iterdir()):
                rel = f"{pre}{sub.name}/{f.name}"
                if f.name.endswith((".tar", ".tar.tmp")) or f.name == DATASHEET:
                    if not (listing and listing.owns(rel)):
                        out.append(rel)
    return out


def _describe(names: Sequence[str], limit: int = 4) -> str:
    listed = ", ".join(shown(n) for n in names[:limit])
    return listed + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _remove(root: Path, listing: _Listing) -> List[str]:
    """Remove what ``listing`` holds (files and their .tmp siblings, then its folders once empty, then the
    manifest); returns the top-level names of what was kept (anything agglom did not write). ``root`` is the
    resolved folder; a path with a symbolic link on the way is never removed (:func:`_refuse_links` refuses a
    listing with one before this runs; this is the second guard)."""
    for rel in listing.files:
        for r in (rel, rel + ".tmp"):
            if safe(root, r) and (root / r).is_file():
                (root / r).unlink()
    for rel in sorted(listing.folders, key=lambda f: -len(Path(f).parts)):
        p = root / rel
        if safe(root, rel) and p.is_dir() and not any(p.iterdir()):
            p.rmdir()
    for name in (MANIFEST, MANIFEST + ".tmp"):
        if safe(root, name) and (root / name).is_file():
            (root / name).unlink()
    return sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())


def _refuse_links(root: Path, rels: Sequence[str]) -> None:
    """ConfigError naming the first symbolic link on the way to any of ``rels`` (inside the resolved ``root``),
    before anything is removed: removing or writing through it would reach outside the folder."""
    from agglom.config.load import ConfigError

    for rel in rels:
        link = link_on_the_way(root, rel)
        if link is not None:
            raise ConfigError(link_message(link, root, " (nothing was removed)"))


def _clear(root: Path, force: bool, tool: str) -> None:
    """Check the existing folder ``root`` and remove the previous dataset agglom wrote there, as the module says."""
    from agglom.config.load import ConfigError

    _refuse_links(root, [MANIFEST, MANIFEST + ".tmp", DATASHEET])  # before they are read
    listing = _from_manifest(root) or _from_datasheet(root)
    if listing is not None:
        _refuse_links(root, [*listing.folders, *listing.files, *(f + ".tmp" for f in listing.files)])
    unlisted = _unlisted_data(root, listing)
    if unlisted and listing is not None and listing.complete:
        raise ConfigError(f"out={shown(root)} holds dataset files agglom did not write there ({_describe(unlisted)}); "
                          "move them out of the folder or choose another out= (force=true removes only what "
                          "agglom wrote)")
    if unlisted:
        raise ConfigError(f"out={shown(root)} holds a dataset agglom has no record of ({_describe(unlisted)}): written by "
                          "another tool, or copied in; force=true will not delete it: remove it yourself or "
                          "choose another out=")
    if listing is None:
        return
    if not listing.complete:
        if listing.writer_alive():
            raise ConfigError(f"out={shown(root)}: agglom (pid {listing.pid}) is writing a dataset there now; wait for it "
                              "to finish or choose another out=")
        print(f"{tool}: removing the unfinished output of an earlier run in {shown(root)} "
              f"({len(listing.files)} files it listed)", flush=True)
        _remove(root, listing)
        return
    shards = [f for f in listing.files if f.endswith(".tar")]
    what = f"{len([f for f in listing.files if f.endswith(DATASHEET)])} datasheet(s), {len(shards)} shard(s)"
    if not force:
        raise ConfigError(f"output {shown(root)} already holds a dataset ({what}, written by {listing.tool}); pass "
                          "force=true to replace it (only the files agglom wrote there are removed)")
    kept = _remove(root, listing)
    print(f"{tool}: force=true: removed the previous dataset in {shown(root)} ({what}, written by {listing.tool})"
          + (f"; kept what agglom did not write: {_describe(kept, 6)}" if kept else ""), flush=True)


# --------------------------------------------------------------------------- one write
class DatasetOutput:
    """One dataset write into ``root``: checks and clears the folder (:meth:`open`), records each file and folder
    before it is created, removes them all when the write fails. A context manager: leaving it normally marks the
    manifest complete; leaving it with an exception removes what was written and turns an OSError into a
    ReadableError."""

    def __init__(self, root: Path, tool: str, created_root: bool, given: Optional[Path] = None):
        self.root, self.tool, self.created_root = Path(root), tool, created_root  # root: the resolved folder
        self.given = Path(given) if given is not None else self.root  # as the user typed it (paths may start so)
        self.files: List[str] = []
        self.folders: List[str] = []
        self.current: Optional[Path] = None  # the file being written, for the error message
        self.complete = False

    @classmethod
    def open(cls, root: os.PathLike, force: bool = False, tool: str = "agglom",
             planned: Sequence[str] = ()) -> "DatasetOutput":
        """Refuse or clear ``root`` (see the module) and start a manifest there. A ``root`` that is a symbolic
        link (or lies under one) is followed: the write then happens in, and stays inside, its resolved folder.
        ``planned``: the folders the write will create (its splits), checked for links before anything is removed
        (a link met later, while writing, is refused too, but after the previous dataset was cleared)."""
        from agglom.config.load import ConfigError

        given = Path(root)
        if given.exists() and not given.is_dir():
            raise ConfigError(f"out={shown(given)} is a file, not a folder; give the path of a folder (a new one, or "
                              "one agglom wrote)")
        if given.is_symlink() and not given.exists():
            raise ConfigError(f"out={shown(given)} is a symbolic link to {shown(os.readlink(given))}, which does not "
                              "exist; create that folder, or give another out=")
        try:
            created = not given.exists()
            if created:
                given.mkdir(parents=True)
            real = Path(os.path.realpath(given))
            if not created:
                _refuse_links(real, [p for p in planned if relative_parts(p) is not None])
                _clear(real, force, tool)
            out = cls(real, tool, created, given)
            out._save()
        except OSError as e:
            raise write_failure(e, given) from None
        return out

    def _rel(self, path: os.PathLike) -> str:
        """``path`` (under the resolved root, or under the root as given) relative to the root, '/'-separated."""
        path = Path(path)
        for base in (self.root, self.given):
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                continue
        from agglom.config.load import ConfigError

        raise ConfigError(f"{shown(path)} is not inside out={shown(self.given)}; agglom writes only inside its "
                          "output folder")

    def _save(self) -> None:
        for name in (MANIFEST, MANIFEST + ".tmp"):
            inside(self.root, name)
        write_json_atomic(self.root / MANIFEST, {
            "schema": SCHEMA, "tool": self.tool, "complete": self.complete,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "pid": os.getpid(), "host": socket.gethostname(), "files": self.files, "folders": self.folders})

    def folder(self, path: os.PathLike) -> Path:
        """Create the folder ``path`` (inside root) and the missing ones above it, recording each it creates;
        returns it under the resolved root. A symbolic link on the way is refused (ConfigError), never entered."""
        rel = self._rel(path)
        if rel == ".":
            return self.root
        inside(self.root, rel)
        parts = Path(rel).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        missing = [p for p in prefixes if not (self.root / p).exists()]
        if missing:
            self.folders += missing
            self._save()
            for p in missing:
                (self.root / p).mkdir(exist_ok=True)
        return self.root / rel

    def file(self, path: os.PathLike) -> Path:
        """Record the file ``path`` (inside root) before it is written (its ``.tmp`` sibling is covered too); returns
        it under the resolved root. The file or its ``.tmp`` being a symbolic link is refused (ConfigError)."""
        rel = self._rel(path)
        self.folder((self.root / rel).parent)
        for r in (rel, rel + ".tmp"):
            inside(self.root, r)
        self.current = self.root / rel
        if rel not in self.files:
            self.files.append(rel)
            self._save()
        return self.root / rel

    def write_json(self, path: os.PathLike, obj: Any) -> None:
        """``obj`` as JSON at ``path``, recorded and written atomically."""
        write_json_atomic(self.file(path), obj)

    def finish(self) -> None:
        self.complete = True
        self._save()

    def discard(self) -> None:
        """Remove everything this write recorded (best effort: what cannot be removed stays listed, and the next
        write removes it), and ``root`` itself when this write created it and it is empty."""
        try:
            _remove(self.root, _Listing(self.files, self.folders, False, self.tool))
            if self.created_root and self.root.is_dir() and not any(self.root.iterdir()):
                self.root.rmdir()
        except OSError:
            pass

    def __enter__(self) -> "DatasetOutput":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None:
            if not self.complete:
                try:
                    self.finish()
                except OSError as e:
                    self.discard()
                    raise write_failure(e, self.root / MANIFEST, "the output of this run was removed") from e
            return False
        self.discard()
        if isinstance(exc, OSError):
            raise write_failure(exc, self.current or self.root, "the partial output of this run was removed") from exc
        return False


__all__ = ["DatasetOutput", "write_failure", "shard_name", "DATASHEET", "FORMAT", "MANIFEST", "SCHEMA"]
