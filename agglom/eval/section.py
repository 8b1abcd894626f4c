"""What every evaluation section is: the :class:`Section` protocol, the :class:`EvalContext` every section reads,
and :class:`ReportError` (a report part that does not follow its schema).

An evaluation (``agglom eval``, :func:`agglom.eval.run.run_evaluation`) is a shared pass plus sections. The driver
loads the model, looks the datasheet up once, asks every section to check its settings (:meth:`Section.prepare`,
before any work), builds the encoders, reads train/val/test once for all of them, and then runs each enabled
section in the order of :data:`agglom.eval.sections.SECTIONS`. A section:

- reads the context (never writes another section's part of it);
- returns its part of ``report.json`` from :meth:`Section.run`: a dict of the top-level keys it owns
  (:attr:`Section.keys`), merged into the report in registry order;
- may add prediction files beside the report (``ctx.csvs[file name] = rows``), figures drawn after the report is
  written (``ctx.figures``), and values for a later section (``ctx.shared[its name]``);
- validates its part of a report (:meth:`Section.check`, raising :class:`ReportError`) and renders its part of
  ``report.md`` (:meth:`Section.markdown`) and its console lines (:meth:`Section.console`).

Each section lives in its own folder under ``agglom/eval/`` (``<folder>/section.py`` beside its metric and runner
modules); ``docs/ARCHITECTURE.md`` ("Evaluation sections") lists them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Tuple, runtime_checkable


class ReportError(ValueError):
    """A report dict does not follow the schema; ``.problems`` lists every issue found."""

    def __init__(self, problems: List[str]):
        super().__init__("invalid agglom.eval report: " + "; ".join(problems))
        self.problems = problems


@dataclass
class EvalContext:
    """What every section may read. Built once by :func:`agglom.eval.run.run_evaluation`.

    ``args``: the parsed :class:`~agglom.config.eval_args.EvalArgs`; ``cfg``: the run's recipe with the data
    overrides applied; ``model``: the student (None for a teacher alone); ``primary``: the model the report is about;
    ``datasheet``: the dataset's datasheet (None without one), looked up once; ``label_info``: its ``label`` entry;
    ``grouping``: how samples are grouped (``indexer``, ``specs``, ``exclude_unknown``, ``label_names``);
    ``attr_names``: ``eval.attributes`` or None (all); ``audit_names``: the teachers audited beside the student;
    ``teachers``: the audited teacher modules by card name; ``spatial``: the spatial encoders the shared pass kept
maps of (``eval.dense``), by model; ``fidelity``: the fidelity accumulator filled on the
    primary's test pass (None when off); ``splits_of``: ``{model: {"train"|"val"|"test": SplitFeatures}}`` from the
    shared pass; ``plans``: what each section's :meth:`Section.prepare` planned, by section name; ``shared``: values
    a section hands to a later one, by section name; ``csvs``: prediction files to write beside the report
    (``{file name: rows}``); ``figures``: callables ``(out_dir) -> None`` run after the report is written.
    """

    args: Any
    cfg: Any
    model: Any
    primary: str
    device: Any
    out: Path
    datasheet: Optional[Mapping[str, Any]] = None
    label_info: Dict[str, Any] = field(default_factory=dict)
    grouping: Dict[str, Any] = field(default_factory=dict)
    attr_names: Optional[List[str]] = None
    audit_names: List[str] = field(default_factory=list)
    teachers: Dict[str, Any] = field(default_factory=dict)
    spatial: Dict[str, Any] = field(default_factory=dict)
    fidelity: Any = None
    splits_of: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    plans: Dict[str, Any] = field(default_factory=dict)
    shared: Dict[str, Any] = field(default_factory=dict)
    csvs: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    figures: List[Callable[[Path], Any]] = field(default_factory=list)

    def kind(self, name: str) -> str:
        """``"student"`` for the primary model when it is a student, else ``"teacher"``."""
        return "student" if name == self.primary and self.model is not None else "teacher"


@runtime_checkable
class Section(Protocol):
    """One evaluation section (see the module docstring)."""

    #: the section's name (its registry key)
    name: str
    #: the top-level report keys it owns (its "part" of report.json)
    keys: Tuple[str, ...]

    def prepare(self, ctx: EvalContext) -> None:
        """Check the section's settings before any work (a :class:`~agglom.config.load.ConfigError`, exit 2) and put
        what it plans in ``ctx.plans[self.name]``; a no-op when the section is off."""

    def enabled(self, ctx: EvalContext) -> bool:
        """Whether :meth:`run` runs in this evaluation (read after the shared pass)."""

    def run(self, ctx: EvalContext) -> Dict[str, Any]:
        """Its part of the report: ``{key: value}`` for keys of :attr:`keys`."""

    def check(self, part: Mapping[str, Any]) -> None:
        """Validate its part (the report's values of :attr:`keys` that are present and not None); raise
        :class:`ReportError` listing every problem."""

    def markdown(self, part: Mapping[str, Any]) -> List[str]:
        """Its lines of ``report.md`` (none when its part is empty)."""

    def console(self, part: Mapping[str, Any]) -> List[str]:
        """What ``agglom eval`` prints of its part once the report is written (printed in report order)."""


def part_of(section: Any, report: Mapping[str, Any]) -> Dict[str, Any]:
    """A section's part of a report: its keys that are present and not None."""
    return {k: report[k] for k in section.keys if report.get(k) is not None}


def raise_problems(problems: List[str]) -> None:
    """Raise :class:`ReportError` when ``problems`` is not empty."""
    if problems:
        raise ReportError(problems)


__all__ = ["EvalContext", "Section", "ReportError", "part_of", "raise_problems"]
