"""One gateway process of ``--workers N`` (``gateway/worker_proc.py``), started through the
composition root so that it runs the build of the core its supervisor runs (``infercdn/core.py``:
importing ``infercdn`` chooses it before ``gateway`` is imported)."""
from __future__ import annotations

import sys

from gateway.worker_proc import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
