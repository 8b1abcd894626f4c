"""`agglom finetune teacher=<card of any family>`, full and LoRA: a short fine-tune of the tiny open_clip and SAM
cards through the real CLI exports a card folder in the family's own format, which `agglom teachers check` passes
and `agglom train` names as a teacher; LoRA trains the adapters (and the head) only, and the merged export computes
what the unmerged adapters did; the card records the method and rank; bad method/rank values exit 2."""
from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from agglom.cli import main  # noqa: E402

CASES = [(card, method) for card in ("tiny-clip", "tiny-sam") for method in ("full", "lora")]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from agglom.data.synth import SynthParams, write_synth

    root = tmp_path_factory.mktemp("ftf") / "synth"
    write_synth(str(root), SynthParams(n=240, seed=2, site_frac=0.25), val_frac=0.2, test_frac=0.1)
    return root


def _finetune(root, out, card, method, steps=4, extra=()):
    return main(["finetune", f"data.root={root}", f"teacher={card}", f"finetune.method={method}",
                 "finetune.lora_rank=4", "finetune.lora_alpha=8", f"optim.steps={steps}", "optim.warmup_steps=1",
                 "optim.lr=3e-3", "data.num_workers=0", "data.batch_size=16", "data.epoch_samples=64",
                 "val_interval=0", "log_interval=2", f"out={out}", f"name={out.name}", "progress=off", *extra])


@pytest.fixture(scope="module")
def exports(synth, tmp_path_factory):
    base = tmp_path_factory.mktemp("ftf_out")
    outs = {}
    for card, method in CASES:
        out = base / f"{card}-{method}"
        assert _finetune(synth, out, card, method) == 0
        outs[card, method] = out
    return outs


def _checkpoint(out):
    from agglom.train.preflight import checkpoint_of
    from teachers.safe_load import load_safetensors

    return load_safetensors(checkpoint_of(out.with_name(out.name + ".run")) / "model.safetensors")


@pytest.mark.slow  # the module's four fine-tunes take ~1 min together
@pytest.mark.parametrize("card,method", CASES)
def test_export_is_a_teacher_of_the_family(exports, card, method, capsys):
    import teachers

    out = exports[card, method]
    base = teachers.load_card(card)
    got = teachers.load_card(str(out))
    assert got.family == base.family and got.name == out.name
    for k in ("input_size", "mean", "std", "resize", "interpolation", "summary", "spatial"):
        assert getattr(got, k) == getattr(base, k), k  # the base card's preprocessing contract, unchanged
    ft = got.finetune
    assert ft["method"] == method and ft["base_card"] == card and ft["base_family"] == base.family
    assert ft["steps"] == 4 and ft["objective"] == "erm" and ft["trainable_params"] > 0
    if method == "lora":
        assert ft["rank"] == 4 and ft["alpha"] == 8.0 and ft["target_modules"] and ft["adapted_modules"] > 0
        assert ft["trainable_params"] < ft["total_params"] / 5
    else:
        assert "rank" not in ft and ft["trainable_params"] == ft["total_params"]
    rec = json.loads((out / "finetune.json").read_text())
    assert rec["method"]["method"] == method and rec["base"]["card"] == card
    assert main(["teachers", "check", str(out)]) == 0
    assert "no parameter requires grad" in capsys.readouterr().out
    weights = out / ("open_clip_model.safetensors" if base.family == "open_clip" else "model.safetensors")
    from teachers.safe_load import load_safetensors

    keys = list(load_safetensors(weights))
    assert not any("lora_" in k or "base_layer" in k or k.startswith("head.") for k in keys)  # a plain encoder


@pytest.mark.slow
@pytest.mark.parametrize("card,method", CASES)
def test_recipe_trains_with_the_export(exports, synth, tmp_path, card, method):
    out = exports[card, method]
    code = main(["train", "recipe=recipes/demo.yaml", f"data.root={synth}", f"teachers=[{{name: {out}}}]",
                 "optim.steps=2", "optim.warmup_steps=1", "data.num_workers=0", "data.batch_size=8",
                 f"out_dir={tmp_path}", "name=with-ft", "log.interval=1", "log.checkpoint_interval=100",
                 "student.model_args={patch_size: 8, embed_dim: 32, depth: 1, num_heads: 2}", "log.progress=off"])
    assert code == 0 and (tmp_path / "with-ft" / "config.yaml").is_file()


def _base_key(key):
    """The base weight's name in the card's teacher: peft's `.base_layer`, a parametrization's `.original` dropped."""
    key = key[len("encoder.model."):].replace(".base_layer", "")
    if ".parametrizations." in key:
        head, _, rest = key.partition(".parametrizations.")
        key = f"{head}.{rest.replace('.original', '')}"
    return key


@pytest.mark.slow
@pytest.mark.parametrize("card", ["tiny-clip", "tiny-sam"])
def test_lora_trains_adapters_only(exports, card):
    import teachers

    sd = _checkpoint(exports[card, "lora"])
    base = teachers.build_teacher(teachers.load_card(card), input_mean=[0.5], input_std=[0.5]).model.state_dict()
    enc = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    frozen = {_base_key(k): v for k, v in enc.items() if "lora_" not in k}
    assert set(frozen) == set(base)
    for k, v in frozen.items():  # every base weight exactly as the card's teacher has it
        assert torch.equal(v, base[k]), k
    lora_b = [v for k, v in enc.items() if "lora_B" in k]
    assert lora_b and any(v.abs().max() > 0 for v in lora_b)  # the adapters moved (they start at zero)
    full = _checkpoint(exports[card, "full"])
    assert any(not torch.equal(full[f"encoder.model.{k}"], base[k]) for k in base)  # full fine-tuning moves the base


@pytest.mark.slow
@pytest.mark.parametrize("card", ["tiny-clip", "tiny-sam"])
def test_merged_export_equals_unmerged_adapters(exports, card):
    import teachers
    from agglom.config.load import load_config
    from agglom.finetune.args import FinetuneArgs
    from agglom.finetune.model import build_encoder

    out = exports[card, "lora"]
    a = load_config(FinetuneArgs, [], recipe=str(out.with_name(out.name + ".run") / "config.yaml"))
    enc = build_encoder(a)  # adapters injected, not merged
    sd = _checkpoint(out)
    enc.model.load_state_dict({k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")})
    enc.model.eval()
    torch.manual_seed(0)
    x = torch.randn(3, 3, enc.image_size, enc.image_size)
    with torch.no_grad():
        unmerged = enc.model(x)
    merged = teachers.build_teacher(teachers.load_card(str(out)), input_mean=enc.mean, input_std=enc.std)(x).summary
    base = teachers.build_teacher(teachers.load_card(card), input_mean=enc.mean, input_std=enc.std)(x).summary
    assert torch.allclose(merged, unmerged, atol=1e-5, rtol=1e-4), (merged - unmerged).abs().max()
    assert (merged - base).abs().max() > 1e-5  # the adapters changed what the encoder computes


@pytest.mark.parametrize("card", ["tiny-hf-dinov2", "tiny-hf-siglip", "tiny-dinov2"])
def test_lora_other_families_export(synth, tmp_path, card):
    import teachers

    out = tmp_path / f"{card}-lora"
    assert _finetune(synth, out, card, "lora", steps=2) == 0
    got = teachers.load_card(str(out))
    assert got.finetune["method"] == "lora" and got.finetune["rank"] == 4
    assert got.family == ("agglom" if card == "tiny-dinov2" else "transformers")
    t = teachers.build_teacher(got, input_mean=[0.5], input_std=[0.5])
    o = t(torch.randn(2, 3, *t.input_size))
    assert torch.isfinite(o.summary).all() and o.summary.shape[1] == t.summary_dim


@pytest.mark.parametrize("bad,word", [("finetune.method=qlora", "full | lora"),
                                      ("finetune.lora_rank=0", "finetune.lora_rank"),
                                      ("finetune.lora_rank=2.5", "finetune.lora_rank"),
                                      ("finetune.lora_alpha=0", "finetune.lora_alpha"),
                                      ("finetune.lora_dropout=1", "finetune.lora_dropout"),
                                      ("finetune.lora_targets=[nope]", "finetune.lora_targets"),
                                      ("teacher=tiny-clipp", "tiny-clip")])
def test_bad_method_refused(synth, tmp_path, capsys, bad, word):
    args = ["finetune", f"data.root={synth}", "teacher=tiny-clip", "optim.steps=1", f"out={tmp_path / 'x'}"]
    if bad.startswith("finetune.lora_targets"):
        args.append("finetune.method=lora")
    assert main(args + [bad]) == 2
    err = capsys.readouterr().err
    assert word in err.replace(", ", " | ") or word in err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("card", ["tiny-clip", "tiny-sam", "tiny-hf-dinov2"])
def test_lora_step_moves_adapters_and_head_only_and_merges_exactly(card, tmp_path):
    """Without the CLI (fast): one optimiser step over the task's param groups changes only lora_* weights and the
    head; merging gives the family's plain module with the same outputs."""
    from agglom.config.load import load_config
    from agglom.finetune.args import FinetuneArgs
    from agglom.finetune.lora import merge
    from agglom.finetune.model import build_encoder
    from agglom.finetune.task import Classifier

    a = load_config(FinetuneArgs, [f"teacher={card}", "finetune.method=lora", "finetune.lora_rank=2",
                                   f"data.root={tmp_path}"])
    enc = build_encoder(a)
    clf = Classifier(enc, 1, seed=0)
    before = {k: v.detach().clone() for k, v in clf.state_dict().items()}
    trainable = [n for n, p in clf.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    opt = torch.optim.AdamW([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(4, 3, enc.image_size, enc.image_size)
    for _ in range(2):  # B starts at zero: the second step moves A as well
        opt.zero_grad()
        clf(x).square().mean().backward()
        opt.step()
    after = clf.state_dict()
    for k, v in before.items():
        moved = not torch.equal(v, after[k])
        assert moved == ("lora_" in k or k.startswith("head.")), k
    clf.eval()
    with torch.no_grad():
        unmerged = clf(x)
        merged_module = merge(enc.lora)
        assert not any("lora_" in k or "base_layer" in k or "parametrizations" in k
                       for k in merged_module.state_dict())
        torch.testing.assert_close(clf(x), unmerged, atol=1e-5, rtol=1e-4)
