"""infercdn sub-commands (one module each)."""
