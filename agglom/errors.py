"""Failures a user must act on that are not config mistakes (those are :class:`agglom.config.ConfigError`, exit 2).

A :class:`ReadableError` says which file, what happened and what to do — a full disk, a damaged or tampered
checkpoint — and the CLI prints it on its own, without a traceback, exiting with 1.
"""
from __future__ import annotations


class ReadableError(RuntimeError):
    """A runtime failure explained in its message; the CLI prints it and exits with ``exit_code``."""

    exit_code = 1


__all__ = ["ReadableError"]
