"""Process-level tuning for a long-running gateway."""
from __future__ import annotations

import gc


def settle_gc() -> None:
    """After start-up: move everything built so far out of the collector's sight and make
    young-generation collections rarer.  A streaming gateway allocates short-lived objects per
    token that reference counting frees at once; the collector's scans are pure overhead."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
