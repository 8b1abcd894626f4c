"""The bad-config suite: every command's config is checked at load, so a bad value exits 2 naming the key, the value
and what is allowed, with nothing written; choices come from the registries; YAML's on/off stay words."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agglom.config import choices as C
from agglom.config.load import ConfigError, load_config
from agglom.config.schema import Recipe

ROOT = Path(__file__).parents[2]
PATCH8 = "student.model_args={patch_size: 8, embed_dim: 32, depth: 2, num_heads: 2}"

# (command, overrides, what stderr must say); each case differs from a valid tiny recipe in one place
BAD_CONFIGS = [
    ("train", ["optim.steps=-5"], "optim.steps=-5: must be >= 1"),
    ("train", ["log.interval=0"], "log.interval=0: must be >= 1"),
    ("train", ["log.checkpoint_interval=0"], "log.checkpoint_interval=0: must be >= 1"),
    ("train", ["optim.lr=-1"], "optim.lr=-1.0: must be > 0"),
    ("train", ["data.num_workers=-1"], "data.num_workers=-1: must be in [0, 256]"),
    ("train", ["data.batch_size=0"], "data.batch_size=0: must be in [1, 65536]"),
    ("train", ["data.image_size=60", PATCH8], "data.image_size=60: must be a multiple of the student's patch size 8"),
    ("train", ["data.image_size=33", "student.model_args.patch_size=16"],
     "must be a multiple of the student's patch size 16 (model_args.patch_size); use 32 or 48"),
    ("train", ["objective.granularity=tokn"], "objective.granularity='tokn': choose one of token, image"),
    ("train", ["objective.group_scope=both"], "objective.group_scope='both': choose one of teacher, sample"),
    ("train", ["objective.teacher_balance=equal"], "choose one of fixed, loss_scale"),
    ("train", ["heads.normaliser=whiten"], "heads.normaliser='whiten': choose one of none, phis, zscore"),
    ("train", ["engine.name=ds"], "engine.name='ds': choose one of deepspeed, torch"),
    ("train", ["engine.precision=fp16"], "engine.precision='fp16': choose one of auto, fp32, bf16"),
    ("train", ["data.interpolation=lanczos"], "choose one of bicubic, bilinear, nearest"),
    ("train", ["data.grayscale=rgb"], "data.grayscale='rgb': choose one of replicate, keep"),
    ("train", ["log.progress=maybe"], "log.progress='maybe': choose one of auto, on, off"),
    ("train", ["data.group_balance=1.5"], "data.group_balance=1.5: must be in [0, 1]"),
    ("train", ["objective.teacher_drop=1"], "objective.teacher_drop=1.0: must be in [0, 1)"),
    ("train", ["data.augment.hflip=2"], "data.augment.hflip=2.0: must be in [0, 1]"),
    ("train", ["groups.unknown=drop"], "groups.unknown='drop': choose one of exclude, include"),
    ("train", ["teachers=[{name: tiny-clip}, {name: tiny-clip}]"], "the teacher is listed twice"),
    ("train", ["name=../outside"], "name='../outside': must be a relative folder name"),
    ("train", ["optim.lrr=1"], "unknown key 'optim.lrr'"),
    ("train", ["data.batch_size=many"], "bad value for 'data.batch_size'"),
    ("sweep", ["sweep.lams=[0,-1]"], "objective.lam must be >= 0; [-1.0] is not"),
    ("sweep", ["sweep.key=objective.lamm"], "sweep.key='objective.lamm': not a key of the recipe"),
    ("sweep", ["sweep.utility=dise"], "sweep.utility='dise': choose one of auc, worst_group_auc"),
    ("cache", ["cache.dtype=bf16"], "cache.dtype='bf16': choose one of fp16, int8, fp32"),
    ("finetune", ["model=vit_small_patch16_224", "optim.lr=0"], "optim.lr=0.0: must be > 0"),
    ("curate", ["teacher=tiny-clip", "method=dbscan"], "method='dbscan': choose one of kmeans, per_class, hierarchical"),
    ("eval", ["run=nowhere", "eval.features=cls"], "eval.features='cls': choose one of summary, pooled, adapters"),
    ("eval", ["run=nowhere", "eval.sam_prompt=circle"], "eval.sam_prompt='circle': choose one of box, point, box+point"),
    ("eval", ["run=nowhere", "eval.sam_prompts=maybe"], "eval.sam_prompts"),
    ("eval", ["run=nowhere", "eval.dense_head=unet"], "eval.dense_head='unet': choose one of linear, conv"),
]


def _tiny(tmp_path: Path, command: str) -> list:
    """A valid config for each command, written under tmp_path/out (which must stay absent)."""
    out = tmp_path / "out"
    if command in ("train", "sweep", "cache"):
        return ["recipe=recipes/demo.yaml", f"out_dir={out}", f"data.root={tmp_path / 'data'}", "log.progress=off"]
    if command == "finetune":
        return [f"out_dir={out}", f"data.root={tmp_path / 'data'}"]
    if command == "curate":
        return [f"root={tmp_path / 'data'}", f"out={out / 'proxy.json'}"]
    return [f"out={out}"]


@pytest.mark.parametrize("command,bad,expect", BAD_CONFIGS, ids=[" ".join(c[1])[:40] for c in BAD_CONFIGS])
def test_bad_config_exits_2_naming_the_key_with_nothing_written(tmp_path, command, bad, expect):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "agglom", command, *_tiny(tmp_path, command), *bad], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stdout[-1500:] + r.stderr[-1500:]
    assert expect in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one problem, one line
    assert not (tmp_path / "out").exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_patch_size_from_model_args_or_the_timm_name():
    from agglom.config.validate import patch_size_of

    assert patch_size_of("vit_small_patch16_224", {}) == 16
    assert patch_size_of("vit_base_patch14_reg4_dinov2", None) == 14
    assert patch_size_of("vit_small_patch16_224", {"patch_size": 8}) == 8
    assert patch_size_of("resnet50", {}) is None
    ok = load_config(Recipe, ["student.model=vit_small_patch16_224", "data.image_size=60",
                              "student.model_args={dynamic_img_pad: true}"])
    assert ok.data.image_size == 60  # a padded patch embedding takes any size


def test_every_problem_is_listed_at_once():
    with pytest.raises(ConfigError) as e:
        load_config(Recipe, ["optim.lr=0", "data.batch_size=0", "heads.summary=nope"])
    msg = str(e.value)
    assert msg.startswith("3 problems in the config:")
    assert "optim.lr=0.0: must be > 0" in msg and "data.batch_size=0" in msg and "heads.summary='nope'" in msg


def test_the_validation_pass_imports_no_torch():
    """A bad config fails in a fraction of a second because validating never imports torch or the registries."""
    code = ("import sys; from agglom.config.load import load_config, ConfigError; "
            "from agglom.config.schema import Recipe\n"
            "try:\n load_config(Recipe, ['heads.summary=nope', 'engine.name=x', 'objective.group=y'])\n"
            "except ConfigError: pass\n"
            "print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_yaml_on_off_and_no_stay_words(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("log:\n  progress: off\n  tensorboard: on\nname: no\n")
    cfg = load_config(Recipe, [f"recipe={recipe}"])
    assert cfg.log.progress == "off" and cfg.log.tensorboard is True and cfg.name == "no"
    cfg = load_config(Recipe, ["log.progress=on", "log.tensorboard=off", "optim.lr=1e-3"])
    assert cfg.log.progress == "on" and cfg.log.tensorboard is False and cfg.optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", sorted(C.REGISTRIES))
def test_builtin_choices_match_the_registries(kind):
    """The torch-free built-in names equal what each registry holds once imported (they cannot drift)."""
    _, _, builtin = C.REGISTRIES[kind]
    assert tuple(sorted(builtin)) == C.live_registry(kind)


@pytest.mark.parametrize("names,module,attr", [
    (C.INTERPOLATION, "agglom.data.transforms", "_INTERP"),
    (C.EVAL_FEATURES, "agglom.model.agglomerator", "FEATURE_KINDS"),
    (C.CURATE_FEATURES, "agglom.curate.embed", "FEATURE_KINDS"),
    (C.CACHE_DTYPES, "agglom.cache.codec", "DTYPES"),
    (C.ECE_BINNINGS, "agglom.metrics.calibration", "ECE_BINNINGS"),
    (C.CURATE_METHODS, "agglom.curate.run", "METHODS"),
    (C.SWEEP_DENSE, "agglom.eval.dense.dense", "STAT_KEYS"),
    (C.DENSE_HEADS, "agglom.eval.dense.dense", "DENSE_HEADS"),
])
def test_closed_choices_match_the_code_that_acts_on_them(names, module, attr):
    assert set(names) == set(getattr(importlib.import_module(module), attr))


def test_sweep_classification_metrics_are_the_headlines_keys():
    from agglom.eval.metrics import MACRO_KEYS
    from agglom.metrics.group_stats import THRESHOLD_METRICS

    assert set(C.SWEEP_CLASSIFICATION) == {*MACRO_KEYS, "ece_gap", *THRESHOLD_METRICS}


def test_a_registered_plugin_is_accepted_once_its_registry_is_loaded():
    from agglom.model.heads import HEADS, MLPHead, register_head

    register_head("mlp2")(MLPHead)
    try:
        assert load_config(Recipe, ["heads.summary=mlp2"]).heads.summary == "mlp2"
    finally:
        HEADS.unregister("mlp2")
    with pytest.raises(ConfigError, match="choose one of attn, mlp, resmlp"):
        load_config(Recipe, ["heads.summary=mlp2"])


def test_help_lists_choices_from_the_registries(capsys):
    from agglom.cli import main

    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "objective.granularity" in out and "one of token | image" in out
    assert "one of attn | mlp | resmlp" in out and "one of deepspeed | torch" in out


def test_group_objective_notes_equal_their_classes():
    """The --help notes of objective.group live torch-free in config/choices.py; each equals its class's note."""
    from agglom.objective.groups import GROUP_OBJECTIVES

    assert C.GROUP_OBJECTIVE_NOTES == {name: cls.note for name, cls in GROUP_OBJECTIVES.items()}
    text = C.describe_group_objectives()
    assert "excess (one-sided: pushes only groups above their reference)" in text and text.startswith("balanced")
