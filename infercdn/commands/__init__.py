"""infercdn sub-commands (one module each)."""
from __future__ import annotations

import sys

from gateway.config import Config, ConfigError, load_config


def load_or_report(path: str | None) -> Config | None:
    """The validated config, or None after printing file, field path and reason to stderr."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
