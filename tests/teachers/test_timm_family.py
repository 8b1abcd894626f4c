"""The timm family reads ViT tokens through timm's own ``forward_intermediates`` (prefix tokens split off, patch
tokens as an NCHW grid): its outputs are bit-for-bit those of ``forward_features`` reshaped by hand, for class and
register tokens, none at all, a dynamic image size, and every summary kind."""
from __future__ import annotations

import pytest
import torch
import yaml

import teachers
from teachers import build_teacher, card_from_dict


def _card(summary: str, **change):
    d = yaml.safe_load((teachers.cards.CARDS_DIR / "tiny-dinov2.yaml").read_text())
    d.update(summary=summary, **change)
    return card_from_dict(d, source="test")


def _by_hand(t, x):
    """What the family computed before: forward_features, prefix tokens dropped, patches reshaped to the grid."""
    feats = t.model.forward_features(x)
    npt = t.model.num_prefix_tokens
    patches = feats[:, npt:]
    b, n, c = patches.shape
    spatial = patches.transpose(1, 2).reshape(b, c, *t.grid)
    summary = {"cls": lambda: feats[:, 0], "mean": lambda: patches.mean(1),
               "pooled": lambda: t.model.forward_head(feats, pre_logits=True)}[t.summary_kind]()
    return summary, spatial


VITS = {
    "dinov2-reg4": {},  # the tiny card: class token + 4 registers
    "no-prefix": {"model": "vit_small_patch16_224", "input_size": 64,
                  "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "class_token": False,
                                 "global_pool": "avg"}},
    "cls-only-dynamic": {"model": "vit_small_patch16_224", "input_size": 48,
                         "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
                                        "dynamic_img_size": True}},
}


@pytest.mark.parametrize("vit,summary", [(v, s) for v in sorted(VITS) for s in ("cls", "mean", "pooled")
                                          if (v, s) != ("no-prefix", "cls")])  # no class token: refused at build
def test_vit_tokens_equal_forward_features_by_hand(vit, summary):
    t = build_teacher(_card(summary, **VITS[vit]), [0.5], [0.5])
    assert t.token_model and t.num_prefix_tokens == t.model.num_prefix_tokens
    x = torch.randn(2, 3, *t.input_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = t.features(x)
        want = _by_hand(t, x)
    assert got[1].shape == (2, t.spatial_dim, *t.grid)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # in the tokens' channels-last layout, which the hand reshape gave every shipped card (prefix tokens): the
    # downstream reductions, and so the trained numbers, depend on it
    assert got[1].is_contiguous(memory_format=torch.channels_last)
    if t.num_prefix_tokens:
        assert got[1].stride()[1:] == want[1].stride()[1:]
