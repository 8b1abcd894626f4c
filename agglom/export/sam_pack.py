"""SAM's own prompt encoder + mask decoder in the export, so the student can replace SAM's image encoder.

For every SAM-family teacher (:mod:`teachers.families.sam`: SAM ViT-B, MedSAM, the tiny card) whose spatial map the
student learnt, ``agglom export`` writes ``sam/<teacher>/``:

- ``decoder.safetensors``: segment-anything's ``PromptEncoder`` and ``MaskDecoder`` weights (keys
  ``prompt_encoder.*`` / ``mask_decoder.*``, as in a SAM checkpoint), taken from the teacher's checkpoint (read
  through :mod:`teachers.safe_load`) or, for a card without weights (``tiny-sam``), its seeded random init;
- ``sam.json`` (schema ``agglom.sam/1``): the decoder's configuration (:func:`teachers.families.sam.decoder_args`),
  SAM's pixel mean/std (0-255) and mask threshold, the teacher's card digest and spatial grid, where the weights
  came from.

``adapters.json`` lists them as ``"sam_decoders": {teacher: {"path", "card_digest"} | {"unavailable": why}}`` (an
optional key: older packs lack it). :func:`load_sam_decoder` rebuilds the two modules from the folder alone.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from safetensors.torch import save_file
from torch import nn

from agglom.data.jsonfile import read_json_object
from agglom.model import TeacherSpec
from agglom.model.agglomerator import module_key
from teachers.safe_load import load_safetensors

SAM_SCHEMA = "agglom.sam/1"
EXPORT_FIX = "export the run again with agglom export"  # a damaged or hand-edited export's index
MAX_ADAPTERS_BYTES = 64 << 20  # adapters.json: the index of an export's adapter pack, a few kB


class SamDecoderUnavailable(ValueError):
    """The export holds no usable SAM decoder for the teacher asked for; the message says why."""


def sam_teachers(specs: Any) -> list:
    """The names of the SAM-family teachers among ``specs`` whose spatial map the student learnt."""
    import teachers as zoo

    out = []
    for s in specs:
        try:
            if s.spatial and zoo.load_card(s.name).family == "sam":
                out.append(s.name)
        except zoo.CardError:
            continue  # a card that is gone: not a SAM teacher this machine can describe
    return out


def pack_sam_decoder(spec: TeacherSpec, out: Path) -> Optional[Dict[str, Any]]:
    """Write one SAM teacher's prompt encoder + mask decoder under ``out/sam/<teacher>/``; its ``adapters.json``
    entry, or None for a teacher of another family (or without a spatial head). A SAM teacher whose decoder cannot
    be packed here (weights missing, an encoder-only checkpoint, a changed card) is listed with why."""
    import teachers as zoo
    from teachers.families.sam import decoder_args, sam_prompt_decoder

    try:
        card = zoo.load_card(spec.name)
        if card.family != "sam" or not spec.spatial:
            return None
        if spec.digest and card.digest() != spec.digest:
            return {"unavailable": "the teacher's card or weights changed since training (card digest differs)"}
        prompt, decoder, source = sam_prompt_decoder(card)
        rel = "sam/" + (re.sub(r"[^A-Za-z0-9_-]+", "_", module_key(spec.name)).strip("_") or "teacher")
        folder = out / rel
        folder.mkdir(parents=True, exist_ok=True)
        state = {f"prompt_encoder.{k}": v.detach().contiguous().cpu() for k, v in prompt.state_dict().items()}
        state.update({f"mask_decoder.{k}": v.detach().contiguous().cpu() for k, v in decoder.state_dict().items()})
        save_file(state, str(folder / "decoder.safetensors"))
        meta = {"schema": SAM_SCHEMA, "teacher": spec.name, "card_digest": card.digest(), "source": source,
                "decoder": decoder_args(card), "pixel_mean": [255.0 * v for v in card.norm_mean],
                "pixel_std": [255.0 * v for v in card.norm_std], "mask_threshold": 0.0, "image_format": "RGB",
                "teacher_grid": list(spec.grid), "spatial_dim": int(spec.spatial_dim)}
        (folder / "sam.json").write_text(json.dumps(meta, indent=1))
    except (zoo.CardError, zoo.MissingWeightsError, zoo.CheckpointFormatError, zoo.UnsafeCheckpointError,
            RuntimeError, OSError) as e:
        why = str(e).splitlines()[0][:300]
        print(f"agglom export: no SAM decoder for teacher {spec.name} ({why[:200]})", flush=True)
        return {"unavailable": why}
    print(f"agglom export: packed the SAM prompt encoder + mask decoder of teacher {spec.name} ({rel}; {source})",
          flush=True)
    return {"path": rel, "card_digest": meta["card_digest"]}


def packed_sam_teacher(export_dir: Path, teacher: Optional[str] = None) -> Tuple[str, Dict[str, Any]]:
    """``(teacher, adapters.json entry)`` of the SAM decoder to use: ``teacher``, or the export's only one."""
    export_dir = Path(export_dir)
    entries = read_json_object(export_dir / "adapters.json", fix=EXPORT_FIX, max_bytes=MAX_ADAPTERS_BYTES).get("sam_decoders") or {}
    packed = [k for k, v in entries.items() if "path" in v]
    if teacher is None:
        if len(packed) != 1:
            raise SamDecoderUnavailable(f"the export {export_dir} has {len(packed)} packed SAM decoders "
                                        f"({', '.join(packed) or 'none'}): name the teacher"
                                        + ("" if packed else "; export a run with a SAM-family teacher (spatial on)"))
        teacher = packed[0]
    info = entries.get(teacher)
    if info is None:
        raise SamDecoderUnavailable(f"the export {export_dir} has no SAM decoder for teacher {teacher!r} (packed: "
                                    f"{', '.join(packed) or 'none'})")
    if "path" not in info:
        raise SamDecoderUnavailable(f"teacher {teacher!r}: its SAM decoder was not packed: {info.get('unavailable')}")
    return teacher, info


def load_sam_decoder(export_dir: Path, teacher: Optional[str] = None) -> Tuple[nn.Module, nn.Module, Dict[str, Any]]:
    """``(PromptEncoder, MaskDecoder, sam.json)`` of ``teacher`` (default: the export's only SAM teacher), from
    the export folder alone (segment-anything's classes; no teacher card or checkpoint needed)."""
    from teachers.families.sam import build_prompt_decoder

    teacher, info = packed_sam_teacher(export_dir, teacher)
    folder = Path(export_dir) / info["path"]
    meta = read_json_object(folder / "sam.json", fix=EXPORT_FIX, max_bytes=16 << 20)
    if meta.get("schema") != SAM_SCHEMA:
        raise SamDecoderUnavailable(f"{folder}/sam.json: unsupported schema {meta.get('schema')!r}")
    prompt, decoder = build_prompt_decoder(meta["decoder"])
    state = load_safetensors(folder / "decoder.safetensors")
    for prefix, module in (("prompt_encoder.", prompt), ("mask_decoder.", decoder)):
        module.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}, strict=True)
    return prompt, decoder, meta


__all__ = ["SAM_SCHEMA", "SamDecoderUnavailable", "sam_teachers", "pack_sam_decoder", "packed_sam_teacher",
           "load_sam_decoder"]
