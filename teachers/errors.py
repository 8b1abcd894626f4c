"""The card and weights errors a user fixes (a field, a file to place, a package to install, hub access); commands
print them on one line (:data:`teachers.build.USER_ERRORS`). Torch-free, so anything may import them."""
from __future__ import annotations


class CardError(ValueError):
    """A card is malformed or names something that does not exist; the message names the field."""


class MissingWeightsError(FileNotFoundError):
    """A card's weights are not on this machine; the message says which file to place where."""


class WeightsDigestError(MissingWeightsError):
    """A card's weights file is present but is not the file the card names (its sha256 differs)."""


class WeightsUnavailableError(RuntimeError):
    """A published tag could not be fetched (offline, or no such tag)."""


__all__ = ["CardError", "MissingWeightsError", "WeightsDigestError", "WeightsUnavailableError"]
