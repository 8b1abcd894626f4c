"""The text tower of an open_clip teacher, for zero-shot (:mod:`teachers.text`).

Built with open_clip's own `_build_text_tower` from the card's model config (the module CLIP.encode_text runs), the
text weights of the same checkpoint as the image tower (a full CLIP state dict: `token_embedding`, `transformer`,
`ln_final`, `text_projection`, or `text.*` for towers with a Hugging Face text encoder), its `logit_scale`/
`logit_bias`, and open_clip's tokenizer for the model (SimpleTokenizer, or an HFTokenizer whose files are saved with
the tower). A random-init card gets a text tower seeded by the card, with open_clip's initial logit scale.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from ..cards import TeacherCard, WeightsUnavailableError, offline_hint
from ..safe_load import load_state_dict
from ..text import TextTower, TextTowerUnavailable
from .oclip import FOLDER_CONFIG, _weights_file, model_config

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # open_clip's CLIP initialisation
TEXT_PREFIXES = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


def text_state(sd: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Optional[float], Optional[float]]:
    """(text tower state dict, log logit scale, logit bias) from a full open_clip state dict."""
    if any(k.startswith("text.") for k in sd):  # CustomTextCLIP: the tower is `text`
        text = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
    else:  # CLIP: the text tower's parts sit at the top level (the image tower is under visual.)
        text = {k: v for k, v in sd.items() if k.startswith(TEXT_PREFIXES)}
    scale = float(sd["logit_scale"].reshape(-1)[0]) if "logit_scale" in sd else None
    bias = float(sd["logit_bias"].reshape(-1)[0]) if "logit_bias" in sd else None
    return text, scale, bias


def has_text(card: TeacherCard) -> bool:
    return "text_cfg" in model_config(card)


def _tokenizer(card: TeacherCard, cfg: Dict[str, Any]) -> Tuple[Any, Dict[str, Any]]:
    """(open_clip tokenizer, the spec that rebuilds it) as `open_clip.get_tokenizer` would choose it."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = cfg["text_cfg"]
    spec = {"context_length": int(text_cfg.get("context_length", 77)),
            "kwargs": dict(text_cfg.get("tokenizer_kwargs", {})), "tokenizer_mode": text_cfg.get("tokenizer_mode")}
    if text_cfg.get("hf_tokenizer_name"):
        folder = card.weights_path() if card.weights.source == "folder" else None
        source = str(folder) if folder is not None and (folder / FOLDER_CONFIG).is_file() else \
            text_cfg["hf_tokenizer_name"]
        try:
            tok = HFTokenizer(source, context_length=spec["context_length"], tokenizer_mode=spec["tokenizer_mode"],
                              **spec["kwargs"])
        except OSError as e:
            raise WeightsUnavailableError(offline_hint(card) + f" (tokenizer {source}). Detail: "
                                          f"{str(e).splitlines()[0][:300]}") from e
        return tok, dict(spec, kind="hf")
    if "siglip" in card.model.lower():
        raise TextTowerUnavailable(f"teacher '{card.name}': open_clip SigLIP tokenizers are not supported for "
                                   "zero-shot yet (use the transformers family for SigLIP models)")
    tok = SimpleTokenizer(context_length=spec["context_length"], **spec["kwargs"])
    vocab = int(text_cfg.get("vocab_size", 49408))
    if vocab < len(tok.encoder):
        raise TextTowerUnavailable(f"teacher '{card.name}': text_cfg.vocab_size {vocab} is smaller than the "
                                   f"tokenizer's vocabulary ({len(tok.encoder)})")
    return tok, dict(spec, kind="simple")


class OpenClipText(TextTower):
    family = "open_clip"

    def __init__(self, name: str, digest: str, model_cfg: Dict[str, Any], quick_gelu: bool, tokenizer: Any,
                 tok_spec: Dict[str, Any], logit_scale: float, logit_bias: Optional[float]) -> None:
        from open_clip.model import _build_text_tower

        super().__init__(name, digest, model_cfg["embed_dim"], logit_scale, logit_bias)
        self.model_cfg = copy.deepcopy(model_cfg)
        self.quick_gelu = bool(quick_gelu)
        self.tokenizer = tokenizer
        self.tok_spec = tok_spec
        text_cfg = dict(model_cfg["text_cfg"])
        if text_cfg.get("hf_model_name"):
            text_cfg["hf_model_pretrained"] = False  # the architecture only: the weights come from the checkpoint
        self.text = _build_text_tower(model_cfg["embed_dim"], text_cfg, quick_gelu=self.quick_gelu)

    def tokenize(self, prompts: Any) -> Dict[str, torch.Tensor]:
        return {"input_ids": self.tokenizer(prompts)}

    def encode(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:
        if self.model_cfg["text_cfg"].get("hf_model_name"):
            return self.text(tokens["input_ids"])  # CustomTextCLIP.encode_text is exactly this
        from open_clip.model import CLIP

        # CLIP.encode_text itself, run on the text tower's modules (CLIP holds the same modules under these names)
        return CLIP.encode_text(self._clip_view, tokens["input_ids"])

    @property
    def _clip_view(self) -> Any:
        t = self.text
        t.text_pool_type, t.text_eos_id = t.pool_type, t.eos_id
        return t

    def save_weights(self, folder: Path) -> Dict[str, Any]:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in self.text.state_dict().items()},
                  str(folder / "text.safetensors"))
        cfg = copy.deepcopy(self.model_cfg)
        if self.tok_spec["kind"] == "hf":
            self.tokenizer.tokenizer.save_pretrained(str(folder / "tokenizer"))
        if cfg["text_cfg"].get("hf_model_name"):  # a Hugging Face text encoder: keep its config, offline
            self.text.transformer.config.save_pretrained(str(folder / "text_config"))
            cfg["text_cfg"]["hf_model_name"] = "text_config"
        return {"model_cfg": cfg, "quick_gelu": self.quick_gelu, "tokenizer": self.tok_spec}


def build(card: TeacherCard, device: torch.device) -> OpenClipText:
    cfg = model_config(card)
    if "text_cfg" not in cfg:
        raise TextTowerUnavailable(f"teacher '{card.name}': its open_clip config has no text tower (text_cfg)")
    tok, spec = _tokenizer(card, cfg)
    path, tag_quick_gelu = _weights_file(card)
    quick_gelu = bool(cfg.get("quick_gelu", False) or tag_quick_gelu)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(card.seed))
        tower = OpenClipText(card.name, card.digest(), cfg, quick_gelu, tok, spec, INIT_LOGIT_SCALE,
                             cfg.get("init_logit_bias"))
    if path is not None:
        text, scale, bias = text_state(load_state_dict(path))
        if not text:
            raise TextTowerUnavailable(f"teacher '{card.name}': {path} holds the image tower only; zero-shot needs "
                                       "the full CLIP checkpoint (with token_embedding, transformer, text_projection)")
        missing, unexpected = tower.text.load_state_dict(text, strict=False)
        if missing or unexpected:
            raise TextTowerUnavailable(f"teacher '{card.name}': the text weights in {path} do not fit the text tower: "
                                       f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        tower.logit_scale = math.exp(scale) if scale is not None else math.exp(INIT_LOGIT_SCALE)
        tower.logit_bias = bias
    else:
        tower.logit_scale = math.exp(INIT_LOGIT_SCALE)
    return tower


def load(folder: Path, meta: Dict[str, Any], device: torch.device) -> OpenClipText:
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    from teachers.safe_load import load_safetensors

    spec = meta["spec"]
    cfg = copy.deepcopy(spec["model_cfg"])
    if cfg["text_cfg"].get("hf_model_name"):
        cfg["text_cfg"]["hf_model_name"] = str(folder / cfg["text_cfg"]["hf_model_name"])
    ts = spec["tokenizer"]
    if ts["kind"] == "hf":
        tok = HFTokenizer(str(folder / "tokenizer"), context_length=ts["context_length"],
                          tokenizer_mode=ts.get("tokenizer_mode"), **ts["kwargs"])
    else:
        tok = SimpleTokenizer(context_length=ts["context_length"], **ts["kwargs"])
    tower = OpenClipText(meta["teacher"], meta["card_digest"], cfg, spec["quick_gelu"], tok, ts,
                         meta["logit_scale"], meta["logit_bias"])
    tower.model_cfg = copy.deepcopy(spec["model_cfg"])
    tower.text.load_state_dict(load_safetensors(folder / "text.safetensors"), strict=True)
    return tower
