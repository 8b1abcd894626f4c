"""Building a frozen teacher from a card (the zoo's front door, re-exported by :mod:`teachers`)."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import torch

from .base import Teacher
from .card_loader import load_card
from .cards import CardError, MissingWeightsError, TeacherCard, WeightsUnavailableError
from .registry import ensure_families, get_family
from .safe_load import CheckpointFormatError, UnsafeCheckpointError

ensure_families()

# the errors a user fixes (a card, a weights file, hub access, a checkpoint): commands report them without a traceback
USER_ERRORS = (CardError, MissingWeightsError, WeightsUnavailableError, UnsafeCheckpointError, CheckpointFormatError)


def build_teacher(card: Union[str, TeacherCard], input_mean: Sequence[float] = (0.5,),
                  input_std: Sequence[float] = (0.5,), device: Any = "cpu") -> Teacher:
    """A frozen teacher for `card` (a TeacherCard or anything load_card accepts), taking batches normalised with
    the student's `input_mean`/`input_std`."""
    card = load_card(card)
    _check_size(card)
    try:
        return get_family(card.family)(card, input_mean, input_std, device=device)
    except (UnsafeCheckpointError, CheckpointFormatError, WeightsUnavailableError):
        raise  # already a clear, named error
    except RuntimeError as e:
        msg = str(e)
        if "Error(s) in loading state_dict" in msg or "size mismatch" in msg:
            where = card.weights_path() or card.weights.tag or card.weights.source
            detail = next((ln.strip() for ln in msg.splitlines() if "size mismatch" in ln or "key" in ln.lower()),
                          msg.splitlines()[0])
            raise CheckpointFormatError(f"teacher card {card.name!r}: the weights {where} do not fit the card's "
                                        f"architecture ({card.family} {card.model}, model_args "
                                        f"{dict(card.model_args or {})}): {detail[:300]}") from None
        raise


MAX_PARAMS = 30e9  # above ViT-22B: a card asking more is a typo or an attack (model_args: {embed_dim: 4800000})


def _check_size(card: TeacherCard) -> None:
    """Count the architecture's parameters on the meta device (no memory, well under a second) before allocating
    it, so a card whose ``model_args`` ask for terabytes is refused by name instead of after a minute's attempt."""
    try:
        with torch.device("meta"):
            t = get_family(card.family)(card, (0.5,), (0.5,), device="meta", load_weights=False)
        n = sum(p.numel() for p in t.parameters())
    except Exception:  # noqa: BLE001 - a family that cannot build on meta is built for real, as before
        return
    if n > MAX_PARAMS:
        raise CardError(f"teacher card {card.name!r}: its architecture ({card.family} {card.model}, model_args "
                        f"{dict(card.model_args or {})}) has {n:.3g} parameters, over the {MAX_PARAMS:.0e} agglom "
                        "builds; check model_args")


def describe_teacher(card: Union[str, TeacherCard]) -> Dict[str, Any]:
    """The teacher's contract (dims, grid, patch, input size, normalisation) without weights: the architecture is
    built on the meta device, so this is instant even for ViT-H and needs no download."""
    card = load_card(card)
    cls = get_family(card.family)
    with torch.device("meta"):
        t = cls(card, (0.5,), (0.5,), device="meta", load_weights=False)
    info = t.contract()
    info.pop("dtype")
    return info


__all__ = ["build_teacher", "describe_teacher", "USER_ERRORS"]
