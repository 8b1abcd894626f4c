"""The evaluation's sections, registered in run order (:class:`agglom.eval.section.Section`; one folder each).

``SECTIONS`` (a :class:`agglom.registry.Registry`, name -> section) runs in registration order, and each section's
part enters ``report.json`` in that order. ``REPORT_ORDER`` is the order a reader meets them in ``report.md`` and the
order :func:`agglom.eval.report.schema.validate_report` checks them in. Adding a section: its folder
``agglom/eval/<name>/`` with a ``section.py``, one line below, and its place in ``REPORT_ORDER``.
"""
from __future__ import annotations

from typing import List

from agglom.eval.classification.section import ClassificationSection, ComparisonSection
from agglom.eval.dense.section import DenseSection
from agglom.eval.fidelity.section import FidelitySection
from agglom.eval.resolution.section import ResolutionSection
from agglom.eval.sam.section import SamSection
from agglom.eval.section import Section
from agglom.eval.zero_shot.section import ZeroShotSection
from agglom.registry import Registry

SECTIONS: Registry[Section] = Registry("eval section")
for _section in (ClassificationSection(), FidelitySection(), ResolutionSection(), DenseSection(), ZeroShotSection(),
                 SamSection(), ComparisonSection()):
    SECTIONS.add(_section.name, _section)

#: report.md's order (and validation's): the models, then what each model was measured on besides
REPORT_ORDER = ("classification", "fidelity", "zero_shot", "dense", "sam", "comparison", "resolution")


def in_report_order() -> List[Section]:
    """The registered sections in :data:`REPORT_ORDER`, any section missing from it last (in run order)."""
    return [SECTIONS[n] for n in REPORT_ORDER if n in SECTIONS] + [s for n, s in SECTIONS.items()
                                                                 if n not in REPORT_ORDER]


__all__ = ["SECTIONS", "REPORT_ORDER", "in_report_order"]
