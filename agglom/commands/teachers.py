"""`agglom teachers list|show|check`: the teacher zoo's cards, their contracts, and a frozen-forward check.

Options: :mod:`agglom.config.teacher_args`; text: :mod:`teachers.listing`; the check: :func:`teachers.check.check_teacher`.
This module parses, maps the zoo's user errors (``teachers.USER_ERRORS``) to exit 2 and prints."""
from __future__ import annotations

from typing import Any

from agglom.commands import Command
from agglom.config.load import ConfigError
from agglom.config.teacher_args import CheckOptions, ListOptions, ShowOptions


def _zoo(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` with the zoo's user errors as a ConfigError (exit 2, the zoo's message)."""
    import teachers

    try:
        return fn(*args)
    except teachers.USER_ERRORS as e:
        raise ConfigError(str(e)) from e


def _card(name: str) -> Any:
    if not name:
        raise ConfigError("give a teacher card: agglom teachers show <name> (agglom teachers list shows them)")
    import teachers

    return _zoo(teachers.load_card, name)


def run_list(cfg: Any) -> int:
    from teachers.listing import cards_table

    print(cards_table(cfg.tiny))
    return 0


def run_show(cfg: Any) -> int:
    from teachers.listing import card_text

    print(card_text(_card(cfg.name)))
    return 0


def run_check(cfg: Any) -> int:
    from teachers.check import check_teacher
    from teachers.listing import check_text

    card = _card(cfg.name)
    if cfg.channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {cfg.channels}")
    r = _zoo(check_teacher, card, cfg.mean, cfg.std, cfg.device, cfg.batch_size, cfg.image_size, cfg.channels,
             cfg.iters, cfg.seed)
    print(check_text(card, r, cfg.device, cfg.batch_size))
    return 0 if r.ok else 1


list_cmd = Command(schema=ListOptions, run=run_list, help="list the teacher cards (family, model, weights, licence)")
show = Command(schema=ShowOptions, run=run_show, help="show a teacher card and its contract (dims, grid, preprocessing)",
               positional="name")
check = Command(schema=CheckOptions, run=run_check,
                help="build a teacher, run a random batch, report dims/dtype/speed and verify it is frozen",
                positional="name")
