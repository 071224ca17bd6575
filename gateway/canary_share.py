"""The canary under ``infercdn gateway --workers N``: one canary per host, the prober's (worker 0),
so an endpoint gets the canary requests of one gateway, not of N.

The prober publishes its verdicts, references and holds on the host link (kind ``canary``)
whenever they change; every other worker takes them whole: an endpoint the prober quarantined
or holds "canary_pending" gets no traffic from any worker, and ``GET /admin/canary`` reads the
same on each.  A worker still holds a new registered endpoint "canary_pending" itself the moment
its topology gains it (the hook runs in every worker), so no worker routes to an unchecked
endpoint while the prober's verdict is on its way.

An operator's POST /admin/endpoints/{id}/unquarantine may reach any worker: it clears the hold
there and sends ``canary_clear`` to the others; the prober clears it too, publishes its new
state, and answers with an empty ``canary_clear`` so that the link's replay of the latest
message of each kind never hands a stale clear to a worker that restarts later."""
from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.canary import Canary, Reference, Verdict, clear
from gateway.host_link import HostLink
from gateway.state import CANARY_SHARE, OBSERVATIONS

Signature = tuple[tuple[Any, ...], tuple[Any, ...]]


def _signature(canary: Canary) -> Signature:
    state, obs = canary.state, canary.app[OBSERVATIONS]
    return (tuple(sorted((e, v.result, v.reason, obs.held(e)) for e, v in state.verdicts.items())),
            tuple(sorted((m, i, r.tokens, r.endpoint) for (m, i), r in state.references.items())))


def payload(canary: Canary) -> dict[str, Any]:
    """The canary's whole state, times as ages (each process has its own clock)."""
    state, obs, now = canary.state, canary.app[OBSERVATIONS], canary.clock()
    return {"verdicts": {e: [v.result, v.reason, v.evidence, now - v.at, obs.held(e)]
                         for e, v in state.verdicts.items()},
            "references": [[m, i, list(r.tokens), r.endpoint, now - r.at]
                           for (m, i), r in state.references.items()]}


def follow(canary: Canary, msg: dict[str, Any]) -> None:
    """The prober's state (or the last, replayed to a worker that starts), taken whole."""
    state, obs, now = canary.state, canary.app[OBSERVATIONS], canary.clock()
    before = set(state.verdicts)
    state.verdicts = {str(e): Verdict(str(r), now - float(age), reason, evidence)
                      for e, (r, reason, evidence, age, _) in msg["verdicts"].items()}
    state.references = {(str(m), int(i)): Reference(tuple(int(t) for t in toks), now - float(age), str(ep))
                        for m, i, toks, ep, age in msg["references"]}
    for eid in before | set(state.verdicts):
        hold = msg["verdicts"].get(eid, [None] * 5)[4]
        if hold is not None:
            obs.hold(eid, str(hold))
        else:
            obs.unhold(eid)


class CanaryShare:
    """The link side of one worker's canary."""

    def __init__(self, canary: Canary, link: HostLink) -> None:
        self.canary, self.link = canary, link
        self.told: Signature | None = None
        link.on("canary", self._follow)
        link.on("canary_clear", self._clear)

    def _follow(self, msg: dict[str, Any]) -> None:
        follow(self.canary, msg)
        self.told = _signature(self.canary)

    def tell(self) -> None:
        """The prober, after a round or a new topology: publish when anything changed (not
        before the replay: a restarted prober would wipe the host's verdicts with its empty state)."""
        if not self.link.prober or not self.link.replayed.is_set():
            return
        signature = _signature(self.canary)
        if signature != self.told:
            self.told = signature
            self.link.publish("canary", **payload(self.canary))

    def _clear(self, msg: dict[str, Any]) -> None:
        eid = msg.get("endpoint")
        if eid is None:  # the prober's answer to a clear: nothing to do
            return
        clear(self.canary.app, str(eid), share=False)
        if self.link.prober:
            self.tell()
            self.link.publish("canary_clear", endpoint=None)


def share_clear(app: web.Application, endpoint_id: str) -> None:
    """An operator cleared ``endpoint_id`` on this worker: the others clear it too."""
    share = app.get(CANARY_SHARE)
    if share is None:
        return
    if share.link.prober:
        share.tell()
    else:
        share.link.publish("canary_clear", endpoint=endpoint_id)
