"""The evaluation's sections (agglom.eval.sections): each registered one follows the Section protocol, owns its own
report keys, rejects a malformed part with an error naming the key, and renders nothing for an empty part; the
resolution part is validated like every other."""
import pytest

from agglom.eval.report.schema import new_report, validate_report
from agglom.eval.resolution.resolution import resolution_section
from agglom.eval.section import ReportError, Section
from agglom.eval.sections import REPORT_ORDER, SECTIONS


def _malformed(section):
    """A part of the right keys with the wrong shape (the classification part's ``models`` is the report's own to
    check as a whole, so one model in it is broken instead)."""
    if "models" in section.keys:
        return {"primary": "m", "models": {"m": "not a model"}}
    return {k: "not a section" for k in section.keys}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_each_section_follows_the_protocol_and_rejects_a_malformed_part(name):
    section = SECTIONS[name]
    assert isinstance(section, Section) and section.name == name
    assert isinstance(section.keys, tuple) and section.keys
    for member in ("prepare", "enabled", "run", "check", "markdown", "console"):
        assert callable(getattr(section, member))
    with pytest.raises(ReportError) as e:
        section.check(_malformed(section))
    first = section.keys[-1] if "models" in section.keys else section.keys[0]
    assert e.value.problems and all(p.startswith(first) for p in e.value.problems), e.value.problems
    assert section.markdown({}) == []
    assert isinstance(section.console({}), list)


def test_sections_own_distinct_keys_and_each_has_a_place_in_the_report():
    keys = [k for s in SECTIONS.values() for k in s.keys]
    assert len(keys) == len(set(keys))
    assert sorted(REPORT_ORDER) == sorted(SECTIONS)


def _resolution():
    return resolution_section(32, [0.5, 1, 2], [16, 32, 64], 64, {"t/summary": [0.5, 0.9, 0.88]},
                              [0.6, 0.7, 0.69], {"site": [0.5, 0.6, 0.6]})


def test_a_resolution_part_is_validated():
    models = {"m": {"kind": "student", "attributes": {}}}
    validate_report(new_report("m", models, resolution=_resolution()))
    bad = _resolution()
    bad["probe"]["auc"] = [0.6, 0.7]  # one value short
    with pytest.raises(ReportError, match=r"resolution\.probe\.auc: expected one value per size"):
        validate_report(new_report("m", models, resolution=bad))
    bad = _resolution()
    bad["validated_range"] = [16, 48]  # 48 px was never evaluated
    with pytest.raises(ReportError, match=r"resolution\.validated_range"):
        validate_report(new_report("m", models, resolution=bad))
    bad = _resolution()
    del bad["sizes"]
    with pytest.raises(ReportError, match=r"resolution: missing \['sizes'\]"):
        validate_report(new_report("m", models, resolution=bad))
