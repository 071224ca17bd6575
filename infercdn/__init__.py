"""The composition root: the ``infercdn`` command and what wires ``routing``, ``gateway``,
``worker`` and ``loadtest`` together for a run (the local fleet of ``infercdn up``).

``gateway`` imports neither ``worker`` nor ``loadtest``; a worker host runs ``infercdn worker
...`` without importing the gateway."""
