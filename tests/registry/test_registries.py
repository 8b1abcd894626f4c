"""Every plugin registry (heads, normalisers, group objectives, engines, teacher families) follows one rule: a name
registered again with the same object is a no-op, with a different object it is refused with an error naming both,
and an unknown name is refused naming the choices."""
from __future__ import annotations

import pytest

from agglom.config.load import ConfigError


def _head():
    from agglom.model.heads import HEADS, MLPHead, ResMLPHead, register_head

    return HEADS, lambda n, o: register_head(n)(o), "mlp", MLPHead, ResMLPHead, ConfigError


def _normaliser():
    from agglom.model.normalisers import NORMALISERS, PHIS, ZScore, register_normaliser

    return NORMALISERS, lambda n, o: register_normaliser(n)(o), "zscore", ZScore, PHIS, ConfigError


def _group_objective():
    from agglom.objective.groups import ERM, GROUP_OBJECTIVES, GroupDRO, register_group_objective

    return GROUP_OBJECTIVES, lambda n, o: register_group_objective(n)(o), "erm", ERM, GroupDRO, ConfigError


def _engine():
    from agglom.engine.base import ENGINES, register_engine

    return (ENGINES, register_engine, "torch", "agglom.engine.torch_engine:TorchEngine",
            "agglom.engine.deepspeed_engine:DeepSpeedEngine", ConfigError)


def _family():
    import teachers
    from teachers.families.sam import SamTeacher
    from teachers.families.timm_vit import TimmTeacher

    return teachers.FAMILIES, lambda n, o: teachers.register_family(n)(o), "timm", TimmTeacher, SamTeacher, KeyError


REGISTRIES = {"head": _head, "normaliser": _normaliser, "group objective": _group_objective, "engine": _engine,
              "teacher family": _family}


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_a_taken_name_is_refused_for_a_different_object(kind):
    registry, register, name, builtin, other, _ = REGISTRIES[kind]()
    before = dict(registry)
    register(name, builtin)  # the same object again (a module imported twice): a no-op
    with pytest.raises(ValueError) as e:
        register(name, other)
    msg = str(e.value)
    assert f"{kind} {name!r} is already registered" in msg and "another name" in msg, msg
    assert (builtin.__qualname__ if isinstance(builtin, type) else builtin) in msg, msg
    assert dict(registry) == before  # nothing replaced


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_a_new_name_is_added_and_an_unknown_one_names_the_choices(kind):
    registry, register, name, builtin, _, unknown_error = REGISTRIES[kind]()
    plugin = type("Plugin", (builtin,), {}) if isinstance(builtin, type) else "tests.plugin:Engine"
    register("plugin-under-test", plugin)
    try:
        assert registry.lookup("plugin-under-test") is plugin and "plugin-under-test" in sorted(registry)
    finally:
        registry.unregister("plugin-under-test")
    assert "plugin-under-test" not in registry and registry.get("plugin-under-test") is None  # a mapping's get
    with pytest.raises(unknown_error) as e:
        registry.lookup("nope")
    msg = str(e.value)
    assert f"unknown {kind} 'nope'; choose one of " in msg and name in msg, msg


def test_the_zoo_copy_of_the_registry_matches_agglom_s():
    """teachers/ cannot import agglom, so it holds a copy: the same methods, the same messages."""
    from agglom.registry import Registry as A
    from teachers.registry import Registry as T

    public = {n for n in vars(A) if not n.startswith("_") or n in ("__getitem__", "__iter__", "__len__")}
    assert public == {n for n in vars(T) if not n.startswith("_") or n in ("__getitem__", "__iter__", "__len__")}
    a, t = A("thing", key="k"), T("thing", key="k")
    for r in (a, t):
        r.add("x", int)
    assert a.unknown("y") == t.unknown("y") == "k: unknown thing 'y'; choose one of x"
    msgs = []
    for r in (a, t):
        with pytest.raises(ValueError) as e:
            r.add("x", float)
        msgs.append(str(e.value))
    assert msgs[0] == msgs[1] == ("thing 'x' is already registered (builtins.int); refusing builtins.float: "
                                  "register it under another name")
