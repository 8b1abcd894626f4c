"""The text tower of a transformers two-tower teacher (SigLIP, CLIP), for zero-shot (:mod:`teachers.text`).

The whole model is loaded as the image teacher loads it (`AutoModel`, same source, same seed for random init) and
reduced to its text side; embeddings are the model's own `get_text_features` (SigLIP: the text head on the last
token; CLIP: the projected EOS token), tokens padded to the model's length as both were trained. The tokenizer is
the checkpoint's own (`AutoTokenizer`); a random-init card gets a byte-level tokenizer built here (random weights
have no published vocabulary). Saved as a `save_pretrained` folder (model + tokenizer) plus the logit scale/bias.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..cards import TeacherCard
from ..text import TextTower, TextTowerUnavailable
from .hf import TWO_TOWER, _fetch, full_model, hf_config, hf_source

BYTE_SPECIALS = ("<pad>", "</s>", "<unk>")


def byte_tokenizer(max_length: int) -> Any:
    """A deterministic byte-level tokenizer (`tokenizers` BPE with no merges: one token per UTF-8 byte, then
    ``</s>``): ids 0 ``<pad>``, 1 ``</s>``, 2 ``<unk>``, 3.. the 256 bytes; 259 ids in all."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(BYTE_SPECIALS)}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def has_text(card: TeacherCard) -> bool:
    return hf_config(card).model_type in TWO_TOWER


TEXT_CLASSES = {"siglip": "SiglipTextModel", "clip": "CLIPTextModelWithProjection"}


def text_part(full: nn.Module) -> nn.Module:
    """The two-tower model's text side as a standalone transformers model whose output is exactly what
    `get_text_features` returns: SigLIP's own `text_model`; for CLIP a CLIPTextModelWithProjection holding the
    model's `text_model` and `text_projection` (same module names, so the same weights)."""
    import transformers

    cfg = full.config
    if cfg.model_type == "siglip":
        return full.text_model
    tcfg = cfg.text_config
    tcfg.projection_dim = cfg.projection_dim
    text = transformers.CLIPTextModelWithProjection(tcfg)
    sd = {k: v for k, v in full.state_dict().items() if k.startswith(("text_model.", "text_projection."))}
    text.load_state_dict(sd, strict=True)
    return text


class HFText(TextTower):
    family = "transformers"

    def __init__(self, name: str, digest: str, text: nn.Module, tokenizer: Any, max_length: int,
                 logit_scale: float, logit_bias: Optional[float]) -> None:
        proj = getattr(text, "text_projection", None)
        dim = int(proj.out_features) if proj is not None else int(text.config.projection_size)
        super().__init__(name, digest, dim, logit_scale, logit_bias)
        self.text = text
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    def tokenize(self, prompts: Any) -> Dict[str, torch.Tensor]:
        enc = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        return {k: enc[k] for k in ("input_ids", "attention_mask") if k in enc}

    def encode(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.text(**tokens)
        return out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output

    def save_weights(self, folder: Path) -> Dict[str, Any]:
        self.text.save_pretrained(str(folder))  # config.json + model.safetensors of the text model alone
        self.tokenizer.save_pretrained(str(folder))
        return {"class": type(self.text).__name__, "max_length": self.max_length}


def _max_length(config: Any) -> int:
    return int(config.text_config.max_position_embeddings)


def build(card: TeacherCard, device: torch.device) -> HFText:
    from transformers import AutoTokenizer

    config = hf_config(card)
    if config.model_type not in TWO_TOWER:
        raise TextTowerUnavailable(f"teacher '{card.name}': {config.model_type} is an image encoder without a text "
                                   f"tower (zero-shot needs a two-tower checkpoint: {', '.join(TWO_TOWER)})")
    with torch.random.fork_rng(devices=[]):  # the same seeded model as the image teacher's
        torch.manual_seed(int(card.seed))
        full = full_model(card, config, load_weights=True).float()
    if card.weights.source == "none":
        tok = byte_tokenizer(_max_length(config))
        if config.text_config.vocab_size < len(tok):
            raise TextTowerUnavailable(f"teacher '{card.name}': text_config.vocab_size {config.text_config.vocab_size} "
                                       f"is smaller than the byte-level tokenizer's {len(tok)} ids")
    else:
        src, kw = hf_source(card)
        tok = _fetch(card, "tokenizer", AutoTokenizer.from_pretrained, src, **kw)
    scale = math.exp(float(full.logit_scale.detach().reshape(-1)[0]))
    bias = getattr(full, "logit_bias", None)
    bias = None if bias is None else float(bias.detach().reshape(-1)[0])
    return HFText(card.name, card.digest(), text_part(full), tok, _max_length(config), scale, bias)


def load(folder: Path, meta: Dict[str, Any], device: torch.device) -> HFText:
    import transformers
    from transformers import AutoTokenizer

    cls_name = meta["spec"]["class"]
    if cls_name not in TEXT_CLASSES.values():
        raise ValueError(f"{folder}: unsupported text tower class {cls_name!r}")
    text = getattr(transformers, cls_name).from_pretrained(str(folder)).float()
    tok = AutoTokenizer.from_pretrained(str(folder))
    return HFText(meta["teacher"], meta["card_digest"], text, tok, meta["spec"]["max_length"], meta["logit_scale"],
                  meta["logit_bias"])
