"""`agglom eval`'s options (a torch-free schema: the command's `--help` and the config check import it, and
:mod:`agglom.eval.run` takes it), beside the other commands' schemas."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from agglom.config.schema import EvalConfig


@dataclass
class EvalArgs:
    run: Optional[str] = None  # a run dir or an export folder
    teacher: Optional[str] = None  # a teacher card name: the audit baseline on its own
    audit: bool = False  # with run=: also evaluate each of the run's teachers with the same protocol
    reference: Optional[str] = None  # a run/eval dir evaluated on the same test split: paired per-group deltas
    data_root: Optional[str] = None  # another dataset (default: the run's)
    sidecars: List[str] = field(default_factory=list)  # proxy-group sidecars to evaluate as attributes
    image_size: Optional[int] = None
    batch_size: int = 128
    num_workers: int = 2
    device: Optional[str] = None
    out: Optional[str] = None  # default <run>/eval, or runs/audit-<teacher>/eval
    seed: int = 0
    # zero-shot through CLIP-family text towers: a prompts file (YAML/JSON {class: [prompt, ...]}), or "recipe"
    # (eval.zero_shot_prompts of this command, else of the run's recipe); None: no zero-shot section
    zero_shot: Optional[str] = None
    eval: EvalConfig = field(default_factory=EvalConfig)


__all__ = ["EvalArgs"]
