"""The options of `agglom teachers list | show | check` (here, not in ``teachers/``: importing the zoo builds its
families, and `agglom --help` must stay fast)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


@dataclass
class ListOptions:
    tiny: bool = True  # include the tiny random-weight cards


@dataclass
class ShowOptions:
    name: str = ""  # card name, card .yaml path, or agglom export folder


@dataclass
class CheckOptions:
    name: str = ""  # card name, card .yaml path, or agglom export folder
    device: str = "cpu"
    batch_size: int = 4
    image_size: int = 64  # the student-side image given to the teacher (it resizes to its own input size)
    channels: int = 1  # 1 (grey, replicated) or 3
    mean: List[float] = field(default_factory=lambda: [0.5])  # the student normalisation of the random batch
    std: List[float] = field(default_factory=lambda: [0.5])
    iters: int = 3  # timed forwards after one warm-up
    seed: int = 0
