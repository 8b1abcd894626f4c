"""The adapter pack: per-teacher heads + normalisers + the teacher roster, beside the timm folder.

`adapters.safetensors` holds the weights; `adapters.json` what is needed to rebuild them (recipe subset,
teacher specs with card digests). `load_adapter_pack(dir)` gives per-teacher predictions from the exported
student, in each teacher's own feature space (normalisers inverted).

For every CLIP-family teacher (one with a text tower whose summary is the image-text embedding) the pack also
carries that teacher's text tower under `text/<teacher>/` (:mod:`teachers.text`: weights, tokenizer, logit scale),
listed in `adapters.json` as ``"text_towers": {teacher: {"path", "card_digest"} | {"unavailable": why}}``, and the
recipe's zero-shot prompts (``"zero_shot_prompts"``): with them the student classifies from prompts
(`agglom eval run=<export> zero_shot=...`) on a machine that has neither the teacher's card nor its weights.

For every SAM-family teacher it carries SAM's own prompt encoder + mask decoder under ``sam/<teacher>/``, listed as
``"sam_decoders"`` (:mod:`agglom.export.sam_pack`), so the student replaces SAM's image encoder
(:mod:`agglom.export.sam_predictor`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from agglom.config.schema import Recipe
from agglom.data.jsonfile import read_json_object
from agglom.export.sam_pack import EXPORT_FIX, MAX_ADAPTERS_BYTES, pack_sam_decoder
from agglom.model import AgglomModel, TeacherSpec
from agglom.model.agglomerator import module_key
from teachers.safe_load import load_safetensors

ADAPTER_SCHEMA = "agglom.adapters/1"  # text_towers, zero_shot_prompts, sam_decoders: optional keys older packs lack


def pack_text_tower(spec: TeacherSpec, out: Path) -> Optional[Dict[str, Any]]:
    """Write one teacher's text tower into the pack; its ``adapters.json`` entry, or None for a teacher family
    without text (timm, SAM, ...). A CLIP-family teacher whose tower cannot be packed here is listed with why."""
    import teachers as zoo
    from teachers.text import TEXT_FAMILIES, TextTowerUnavailable

    try:
        card = zoo.load_card(spec.name)
        if card.family not in TEXT_FAMILIES or not zoo.has_text_tower(card):
            return None
        if card.summary not in (None, "embed"):
            return {"unavailable": f"the card's summary is {card.summary!r}, not the image-text embedding (embed)"}
        if spec.digest and card.digest() != spec.digest:
            return {"unavailable": "the teacher's card or weights changed since training (card digest differs)"}
        rel = "text/" + (re.sub(r"[^A-Za-z0-9_-]+", "_", module_key(spec.name)).strip("_") or "teacher")
        zoo.build_text_tower(card).save(out / rel)
    except (TextTowerUnavailable, zoo.CardError, zoo.WeightsUnavailableError, zoo.MissingWeightsError, OSError) as e:
        print(f"agglom export: no text tower for teacher {spec.name} ({str(e).splitlines()[0][:200]})", flush=True)
        return {"unavailable": str(e).splitlines()[0][:300]}
    print(f"agglom export: packed the text tower of teacher {spec.name} ({rel}) for zero-shot", flush=True)
    return {"path": rel, "card_digest": card.digest()}


def write_adapter_pack(model: AgglomModel, cfg: Any, out: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith("student.")}
    save_file(state, str(out / "adapters.safetensors"))
    towers = {s.name: info for s in model.specs if s.summary and (info := pack_text_tower(s, out)) is not None}
    sams = {s.name: info for s in model.specs if s.spatial and (info := pack_sam_decoder(s, out)) is not None}
    meta = {
        "schema": ADAPTER_SCHEMA,
        "teachers": [s.to_dict() for s in model.specs],
        "summary_token_index": model.summary_token_index,
        "recipe": {
            "student": OmegaConf.to_container(cfg.student, resolve=True),
            "heads": OmegaConf.to_container(cfg.heads, resolve=True),
            "data": {"image_size": cfg.data.image_size, "grayscale": cfg.data.grayscale,  # resolutions: the
                     "resolutions": list(cfg.data.get("resolutions") or [])},  # eval's training size of an export
        },
        "text_towers": towers,
        "zero_shot_prompts": OmegaConf.to_container(cfg.eval.zero_shot_prompts, resolve=True),
        "sam_decoders": sams,
    }
    (out / "adapters.json").write_text(json.dumps(meta, indent=1))


class AdapterPack(nn.Module):
    """A timm student + its adapter heads: `forward(x)` -> {teacher: {summary, spatial}} in teacher space;
    `text_tower(teacher)` -> that teacher's packed text tower (CLIP-family teachers)."""

    def __init__(self, model: AgglomModel, export_dir: Optional[Path] = None,
                 text_towers: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.model = model
        self.export_dir = Path(export_dir) if export_dir is not None else None
        self.text_towers = dict(text_towers or {})

    @property
    def teacher_names(self):
        return self.model.teacher_names

    @torch.no_grad()
    def forward(self, x: torch.Tensor, normalised: bool = False) -> Dict[str, Dict[str, torch.Tensor]]:
        preds = self.model(x)
        if normalised:
            return preds
        return {name: self.model.denormalise(name, p) for name, p in preds.items()}

    def text_tower(self, name: str, device: Any = "cpu") -> Any:
        """The packed text tower of teacher ``name`` (:class:`teachers.text.TextTower`)."""
        assert self.export_dir is not None
        return load_pack_text_tower(self.export_dir, name, device=device)


def load_pack_text_tower(export_dir: Path, name: str, device: Any = "cpu") -> Any:
    """Teacher ``name``'s text tower from an export's adapter pack, without loading the student."""
    from teachers.text import TextTowerUnavailable, load_text_tower

    export_dir = Path(export_dir)
    towers = read_json_object(export_dir / "adapters.json", fix=EXPORT_FIX, max_bytes=MAX_ADAPTERS_BYTES).get("text_towers") or {}
    info = towers.get(name)
    if info is None:
        raise TextTowerUnavailable(f"the adapter pack in {export_dir} has no text tower for teacher {name!r} (packed: "
                                   f"{', '.join(k for k, v in towers.items() if 'path' in v) or 'none'})")
    if "path" not in info:
        raise TextTowerUnavailable(f"teacher {name!r}: its text tower was not packed: {info.get('unavailable')}")
    return load_text_tower(export_dir / info["path"], device=device)


def load_adapter_pack(export_dir: Path, student: nn.Module = None) -> AdapterPack:
    """Load `<export_dir>` (timm folder + adapter pack); `student` may be a timm model loaded already."""
    import timm

    export_dir = Path(export_dir)
    meta = read_json_object(export_dir / "adapters.json", fix=EXPORT_FIX, max_bytes=MAX_ADAPTERS_BYTES)
    if meta.get("schema") != ADAPTER_SCHEMA:
        raise ValueError(f"{export_dir}/adapters.json: unsupported schema {meta.get('schema')!r}")
    if student is None:
        student = timm.create_model(f"local-dir:{export_dir.resolve()}", pretrained=True, num_classes=0)
    cfg = OmegaConf.structured(Recipe)
    cfg = OmegaConf.merge(cfg, {"student": meta["recipe"]["student"], "heads": meta["recipe"]["heads"],
                                "data": meta["recipe"]["data"]})
    specs = [TeacherSpec.from_dict(d) for d in meta["teachers"]]
    model = AgglomModel(cfg, specs, in_chans=student.patch_embed.proj.in_channels, student=student)
    model.summary_token_index = {k: int(v) for k, v in meta["summary_token_index"].items()}
    missing, unexpected = model.load_state_dict(load_safetensors(export_dir / "adapters.safetensors"), strict=False)
    missing = [k for k in missing if not k.startswith("student.")]
    if missing or unexpected:
        raise ValueError(f"adapter pack mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return AdapterPack(model.eval(), export_dir, meta.get("text_towers"))
