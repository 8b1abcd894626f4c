"""What one shard, member or sample may cost a reader: the bounds that turn hostile input into a counted skip.

A shard is data from outside (a download, a colleague's export, a file damaged in transit). Without a bound, a 5 kB
file can hang a reader, allocate 100 GB or end in a traceback; with one, the member or sample is refused with a
message naming the size and the limit, and the readers count it (:mod:`agglom.data.counts`): a tar header that breaks
a bound makes the shard ``bad_tar`` (:mod:`agglom.data.tarstream`), an image over the pixel limit ``bad_image``
(:mod:`agglom.data.decode`), a json over the size or depth limit ``bad_json``, a key that names a path ``bad_key``
(:mod:`agglom.data.pipeline`).

- :data:`MAX_MEMBER_BYTES` (1 GiB): one tar member's declared size. An image at the pixel limit below is at most
  40 MP x 3 channels x 2 bytes = 240 MB as raw 16-bit PNG data, and PNG/JPEG are smaller; 1 GiB leaves four times
  that (a float32 ``.npy`` at the limit is 480 MB), and a reader then holds at most one such member at a time.
- :data:`MAX_HEADER_BYTES` (1 MiB): a pax extended header or GNU long name (they hold a path and a few numbers).
- :data:`MAX_EXPANSION` (1100x, beyond :data:`EXPANSION_FLOOR` = 64 MiB): what a compressed shard may decompress
  to, relative to the compressed bytes read. gzip cannot exceed ~1032x, so only a bzip2/xz bomb trips it.
- :data:`MAX_PIXELS` (40 megapixels): an image's width x height, read from its header before any pixel is
  decoded. The largest 2D medical images stored as PNG, full-field mammograms, are ~20-30 MP (e.g. 4096 x 5625);
  decoding 40 MP costs ~0.5 GB as float32 RGB. PIL's own guard (``Image.MAX_IMAGE_PIXELS``, ~89 MP) only warns
  below twice its value and raises an error type the readers did not catch.
- :data:`MAX_JSON_BYTES` (1 MiB) and :data:`MAX_JSON_DEPTH` (64): a sample's metadata is a few hundred bytes,
  two or three levels deep; Python's parser raises ``RecursionError`` around depth 1000.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional, Union

MAX_MEMBER_BYTES = 1 << 30
MAX_HEADER_BYTES = 1 << 20
MAX_EXPANSION = 1100
EXPANSION_FLOOR = 64 << 20
MAX_PIXELS = 40_000_000
MAX_JSON_BYTES = 1 << 20
MAX_JSON_DEPTH = 64

_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def json_depth(text: str, stop: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of arrays and objects in JSON ``text`` (brackets inside strings ignored), or the first
    depth over ``stop``: one pass over the special characters only."""
    depth = deepest = 0
    in_string, skip = False, -1
    for m in _JSON_SPECIAL.finditer(text):
        i, c = m.start(), m.group()
        if i == skip:
            continue
        if in_string:
            if c == "\\":
                skip = i + 1  # the escaped character
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop:
                    break
        elif c in "]}":
            depth -= 1
    return deepest


def sample_json(data: Union[bytes, bytearray, memoryview, str]) -> Any:
    """``json.loads`` of a sample's ``.json`` member within :data:`MAX_JSON_BYTES` and :data:`MAX_JSON_DEPTH`;
    ``ValueError`` (the readers' ``bad_json``) otherwise. The depth is measured only when the text holds more
    brackets than the limit, so ordinary metadata costs two ``bytes.count`` calls."""
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    if len(raw) > MAX_JSON_BYTES:
        raise ValueError(f"json of {len(raw)} bytes, over the {MAX_JSON_BYTES}-byte limit for a sample's metadata")
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH:
        text = raw.decode(json.detect_encoding(raw))
        depth = json_depth(text)
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"json nested more than {MAX_JSON_DEPTH} levels deep (the limit for a sample's metadata)")
        return json.loads(text)
    return json.loads(raw)


def unsafe_key(key: Any) -> Optional[str]:
    """Why a sample key cannot name a member of a tar the cache writes (absolute, a ``..`` part, a NUL or another
    control character, empty), or None. Such a key would be a path outside the folder for whoever extracts it."""
    if not isinstance(key, str) or not key:
        return "an empty key"
    if key.startswith(("/", "\\")):
        return f"key {key[:80]!r} is an absolute path"
    if ".." in re.split(r"[/\\]", key):
        return f"key {key[:80]!r} has a '..' part"
    if any(ord(c) < 32 for c in key):
        return f"key {key[:80]!r} holds a control character"
    return None


__all__ = ["MAX_MEMBER_BYTES", "MAX_HEADER_BYTES", "MAX_EXPANSION", "EXPANSION_FLOOR", "MAX_PIXELS",
           "MAX_JSON_BYTES", "MAX_JSON_DEPTH", "json_depth", "sample_json", "unsafe_key"]
