"""Load-time checks of the multi-resolution keys (``data.resolutions``), run by :mod:`agglom.config.validate`
(which calls :func:`check_resolutions` among its cross checks): every size a multiple of the student's patch size,
no size above ``data.image_size`` (the size the reader reads and the teachers resize from: a larger student size
would only upsample), and a student built with ``dynamic_img_size`` (a fixed-size timm ViT refuses other sizes)."""
from __future__ import annotations

from typing import Any, List

from agglom.config.rules import _ABSENT, _get, _is_num, _plain, patch_size_of


def check_resolutions(cfg: Any) -> List[str]:
    """One line per problem of ``data.resolutions`` (empty: valid, or the key is not in this command's schema)."""

    sizes = _get(cfg, "data.resolutions")
    if sizes is _ABSENT or sizes is None:
        return []
    sizes = list(_plain(sizes))
    if not sizes or not all(_is_num(s) and int(s) == s and s >= 1 for s in sizes):
        return []  # empty = off; a non-integer or non-positive size is the RULES entry's message
    out = []
    args = _plain(_get(cfg, "student.model_args"))
    args = args if isinstance(args, dict) else {}
    p = patch_size_of(str(_get(cfg, "student.model")), args)
    bad = [int(s) for s in sizes if p and s % p]
    if bad and not args.get("dynamic_img_pad"):
        out.append(f"data.resolutions={sizes}: {bad} not a multiple of the student's patch size {p}")
    size = _get(cfg, "data.image_size")
    if _is_num(size) and max(sizes) > size:
        out.append(f"data.resolutions={sizes}: the largest size exceeds data.image_size={size}, the size the reader "
                   "reads (a larger student input would only be upsampled); set data.image_size to max(resolutions)")
    if not args.get("dynamic_img_size"):
        out.append(f"data.resolutions={sizes}: needs student.model_args.dynamic_img_size=true (a fixed-size ViT "
                   "takes one input size)")
    return out
