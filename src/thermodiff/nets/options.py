"""Validation of network options: a bad value is a one-line ConfigError naming the
network and the option, because options come from a user's config."""

from __future__ import annotations

from typing import Any

from thermodiff.errors import ConfigError


def check_int(owner: str, name: str, value: Any, lo: int = 1) -> int:
    """Return value if it is an integer (not a bool) >= lo, else raise ConfigError.

    Shapes: none (configuration only)
    """
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{owner} {name} must be an integer >= {lo}, got {value!r}")
    return value
