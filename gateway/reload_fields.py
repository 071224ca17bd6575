"""What a reload changes: every config field is either applied by a reload (``LIVE``) or needs a
restart (``RESTART``), and ``tests/gateway/test_reload_fields.py`` walks the config models so
that a new field without a decision fails.

Paths name fields as written in the file; ``[]`` is any item of a list, ``*`` any key of a
mapping: ``pools[].simulate.ttft_ms``, ``models.*.hedge.enabled``.  A changed restart field is
reported with its items named (``pools[eu-pool].simulate.ttft_ms``)."""
from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel

# Fixed at start: the listener, what the process opened (GeoIP database, access log, Redis,
# upstream connection pool, background loops' periods, the retry budget's window), the client
# locator (trusted proxies, the fallback location), the request-size cap of the HTTP server,
# the drain timings (read when the stop begins, from the start config), and the local stand-ins
# `infercdn up` started (simulators, launched vLLM).
RESTART = frozenset({
    "gateway.host", "gateway.port", "gateway.location.lat", "gateway.location.lon", "gateway.location.name",
    "gateway.trusted_proxies", "gateway.max_body_bytes", "gateway.access_log",
    "gateway.drain_notice_s", "gateway.drain_timeout_s", "gateway.config_watch_s",
    "gateway.header_timeout_s", "gateway.body_timeout_s", "gateway.max_connections",  # the edge runner (start)
    "gateway.fast_lane",
    "geoip.database", "geoip.cache_size",
    "health.interval_s", "load.scrape_interval_s", "load.enabled",
    "timeouts.connect_s", "budget.window_s",
    "auth.shared.redis_url", "auth.shared.key_prefix", "auth.shared.timeout_ms", "auth.shared.lease_s",
    "pools[].simulate.endpoints", "pools[].simulate.ttft_ms", "pools[].simulate.itl_ms",
    "pools[].simulate.rtt_ms", "pools[].simulate.max_num_seqs",
    "pools[].launch.engine", "pools[].launch.model_dir", "pools[].launch.max_model_len",
    "pools[].launch.kv_cache_memory_bytes", "pools[].launch.max_num_seqs", "pools[].launch.extra_args",
    # the open fleet: the registry's Redis connection and poll period, the canary's tick
    "registry.redis_url", "registry.timeout_s", "registry.poll_s", "canary.interval_s",
})

# Applied by a reload: everything read from the routing snapshot per request or per background
# round, the observation settings (Observations.set_params), the tenants (their buckets kept),
# and the retry budget's ratio and floor.
LIVE = frozenset({
    "gateway.region", "gateway.keepalive_comment_s", "gateway.admin_networks",
    "routing.policy", "routing.balancer", "routing.geo_base_ms", "routing.geo_ms_per_1000km",
    "routing.queue_ms_per_waiting", "routing.queue_ms_per_running", "routing.kv_pressure_ms",
    "routing.error_penalty_ms", "routing.cost_ms_per_dollar", "routing.panic_threshold", "routing.max_pools",
    "health.timeout_s", "health.path", "health.rise", "health.fall",
    "outlier.consecutive_failures", "outlier.base_ejection_s", "outlier.max_ejection_s",
    "outlier.max_ejected_percent",
    "latency.half_life_s",
    "load.timeout_s", "load.stale_s",
    "retry.max_attempts", "retry.backoff_base_ms", "retry.backoff_max_ms", "retry.max_retry_after_s",
    "budget.ratio", "budget.min_per_s",
    "breaker.enabled", "breaker.failures", "breaker.open_s", "breaker.max_open_s", "breaker.half_open_probes",
    "models.*.ttft_deadline_s", "models.*.stall_timeout_s", "models.*.total_deadline_s", "models.*.resume",
    "models.*.non_stream", "models.*.hedge.enabled", "models.*.hedge.after_ms", "models.*.hedge.min_after_ms",
    "models.*.hedge.max_hedges", "models.*.fallbacks", "models.*.larger_context",
    "models.*.ttft_auto.factor", "models.*.ttft_auto.floor_s", "models.*.ttft_auto.ceiling_s",
    "models.*.ttft_auto.min_samples", "models.*.ttft_auto.fallback_s", "models.*.stall_auto.factor",
    "models.*.stall_auto.floor_s", "models.*.stall_auto.ceiling_s", "models.*.stall_auto.min_samples",
    "models.*.stall_auto.fallback_s", "models.*.resume_deadline_s", "models.*.fallback_on",
    "retry.max_resumes", "retry.max_wait_s", "pools[].prefill",
    "auth.required",
    "auth.tenants[].name", "auth.tenants[].api_keys", "auth.tenants[].api_key_sha256", "auth.tenants[].models",
    "auth.tenants[].required_tags", "auth.tenants[].jurisdictions", "auth.tenants[].requests_per_s",
    "auth.tenants[].burst", "auth.tenants[].max_concurrent", "auth.tenants[].tokens_per_minute",
    "auth.anonymous.name", "auth.anonymous.api_keys", "auth.anonymous.api_key_sha256", "auth.anonymous.models",
    "auth.anonymous.required_tags", "auth.anonymous.jurisdictions", "auth.anonymous.requests_per_s",
    "auth.anonymous.burst", "auth.anonymous.max_concurrent", "auth.anonymous.tokens_per_minute",
    "regions[].name", "regions[].location.lat", "regions[].location.lon", "regions[].location.name",
    "regions[].jurisdiction", "regions[].tags",
    "pools[].name", "pools[].region", "pools[].models", "pools[].endpoints[].id", "pools[].endpoints[].url",
    "pools[].endpoints[].weight", "pools[].endpoints[].health_url", "pools[].tags", "pools[].price_per_mtok",
    "pools[].tier", "pools[].draining", "pools[].max_context", "pools[].can_continue", "pools[].ttft_deadline_s",
    "pools[].endpoints[].dns_refresh_s",
    "gateway.forwarded_header", "gateway.metrics_networks", "retry.client_retry_after_max_s",
    "upstream_limits.max_head_bytes", "upstream_limits.max_event_bytes", "upstream_limits.max_body_bytes",
    "upstream_limits.max_error_body_bytes", "upstream_limits.resume_buffer_bytes",
    "upstream_limits.resume_buffer_total_bytes",
    "auth.tenants[].policy", "auth.tenants[].cost_slack_ms", "auth.anonymous.policy", "auth.anonymous.cost_slack_ms",
    # providers are judged on every registry read (a revoke by reload applies at once)
    "registry.key_prefix", "registry.max_clock_skew_s", "registry.providers[].name",
    "registry.providers[].token_sha256", "registry.providers[].tags", "registry.providers[].jurisdictions",
    "registry.providers[].revoked",
    "canary.enabled", "canary.hold_new", "canary.max_tokens", "canary.prompts", "canary.reference_tags",
    "canary.reference_ttl_s", "canary.timeout_s", "canary.tolerance",
})


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next(filter(None, map(_model_in, typing.get_args(annotation))), None)
    return None


def leaves(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf field path of ``model`` (see the module's notation)."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        ann, path = info.annotation, prefix + (info.alias or name)  # as written in the file
        origin, args = typing.get_origin(ann), typing.get_args(ann)
        inner = _model_in(ann)
        if origin is tuple and args and _model_in(args[0]) is not None:
            out += leaves(_model_in(args[0]), path + "[].")  # type: ignore[arg-type]
        elif origin is dict and len(args) == 2 and _model_in(args[1]) is not None:
            out += leaves(_model_in(args[1]), path + ".*.")  # type: ignore[arg-type]
        elif inner is not None:
            out += leaves(inner, path + ".")
        else:
            out.append(path)
    return out


def _values(node: Any, parts: list[str], at: str) -> dict[str, Any]:
    """Concrete path -> value for the generic path ``parts`` under ``node``."""
    if not parts:
        return {at: node}
    head, rest = parts[0], parts[1:]
    if node is None:  # an optional section left out (auth.shared): its fields read as None
        return {".".join(filter(None, [at, *(p.removesuffix("[]") for p in parts)])): None}
    if head.endswith("[]"):
        out: dict[str, Any] = {}
        for i, item in enumerate(getattr(node, head[:-2])):
            key = getattr(item, "name", None) or getattr(item, "id", None) or i
            out.update(_values(item, rest, f"{at}{'.' if at else ''}{head[:-2]}[{key}]"))
        return out
    if head == "*":
        out = {}
        for key, item in node.items():
            out.update(_values(item, rest, f"{at}.{key}"))
        return out
    return _values(getattr(node, head), rest, f"{at}{'.' if at else ''}{head}")


def restart_needed(old: BaseModel, new: BaseModel) -> list[str]:
    """The restart fields whose value differs (items present in both configs only: a pool
    that is new is reported as not started instead)."""
    out = []
    for path in sorted(RESTART):
        a, b = _values(old, path.split("."), ""), _values(new, path.split("."), "")
        out += [k for k in a if k in b and a[k] != b[k]]
    return out
