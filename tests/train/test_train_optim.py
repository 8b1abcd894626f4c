"""AdamW's parameter groups (agglom/train/optim.py): timm's split, always [decay, no_decay], whatever the decay."""
import pytest
import timm

from agglom.train.optim import param_groups


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_groups_are_timms_split_in_a_fixed_layout(wd):
    m = timm.create_model("vit_small_patch16_224", pretrained=False, patch_size=8, embed_dim=32, depth=2, num_heads=2,
                          img_size=32, reg_tokens=2)
    decay, no_decay = param_groups(m, wd)
    names = {id(p): n for n, p in m.named_parameters()}
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    nd = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "reg_token", "pos_embed"} <= nd and all(n.endswith((".bias", "token", "embed")) or
                                                                  "norm" in n for n in nd)
    assert all(p.ndim >= 2 for p in decay["params"]) and not any("pos_embed" in names[id(p)] for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == sum(1 for _ in m.parameters())
