"""The composition root: the ``infercdn`` command and what wires ``routing``, ``gateway``,
``worker`` and ``loadtest`` together for a run (the local fleet of ``infercdn up``).

``gateway`` imports neither ``worker`` nor ``loadtest``; a worker host runs ``infercdn worker
...`` without importing the gateway."""
from infercdn.core import activate as _activate

# the core's build (compiled by mypyc when a fresh build is there, else Python) is chosen before
# anything imports routing or gateway: see infercdn/core.py
CORE = _activate()
