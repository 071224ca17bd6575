"""The forwarding path's long-lived parts, built once per gateway (``gateway.app``) and handed
to each request's race and session: what they need, never the orchestrator itself."""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.forward.dialer import Dialer
from gateway.forward.ledger import Ledger
from gateway.forward.relay import ByteBudget
from gateway.state import Runtime
from routing.observations import Observations


@dataclass(frozen=True, slots=True)
class Parts:
    dialer: Dialer
    ledger: Ledger
    obs: Observations  # read for deadlines and hedging (written only through the ledger and leases)
    rt: Runtime
    # resume buffers of all streams (upstream_limits.resume_buffer_total_bytes)
    retained: ByteBudget = field(default_factory=ByteBudget)
