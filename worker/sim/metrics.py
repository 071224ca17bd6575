"""Live counters of the simulator and their Prometheus rendering under vLLM's metric names."""
from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from worker.sim.engine import Scheduler

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
               120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort")


class Histogram:
    """A cumulative-bucket histogram, rendered like prometheus-client does."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.sum += value

    def render(self, name: str, labels: str) -> list[str]:
        lines, total = [], 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            total += count
            le = "+Inf" if bound == float("inf") else repr(float(bound))
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {float(total)}')
        lines.append(f"{name}_count{{{labels}}} {float(total)}")
        lines.append(f"{name}_sum{{{labels}}} {self.sum}")
        return lines


@dataclass
class SimStats:
    """Counters a test reads directly (``sim.stats``) or through ``GET /sim/stats``.

    requests_total: generation requests received; requests_completed: generations that ran to
    their end and were written out; requests_cancelled: the client left before the response
    ended (also during hang/stall faults); requests_failed: requests a fault made fail;
    tokens_sent: completion tokens actually written to sockets; ``paths``: hits per route;
    ``faults``: fault outcomes by kind (``health:<kind>`` for health-endpoint outcomes).
    """

    scheduler: Scheduler
    requests_total: int = 0
    requests_completed: int = 0
    requests_cancelled: int = 0
    requests_failed: int = 0
    tokens_sent: int = 0
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    kv_tokens: int = 0
    prefix_queries: int = 0
    prefix_hits: int = 0
    paths: Counter[str] = field(default_factory=Counter)
    faults: Counter[str] = field(default_factory=Counter)
    finished: Counter[str] = field(default_factory=Counter)
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS))

    @property
    def running(self) -> int:
        return self.scheduler.running

    @property
    def waiting(self) -> int:
        return self.scheduler.waiting

    def as_dict(self) -> dict[str, Any]:
        names = ("requests_total", "requests_completed", "requests_cancelled", "requests_failed",
                 "tokens_sent", "running", "waiting", "prompt_tokens_total",
                 "generation_tokens_total", "kv_tokens", "prefix_queries", "prefix_hits")
        out: dict[str, Any] = {n: getattr(self, n) for n in names}
        out["paths"] = dict(self.paths)
        out["faults"] = dict(self.faults)
        out["finished"] = dict(self.finished)
        return out


def _metric(name: str, kind: str, help_text: str, samples: list[str]) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples]


def render_metrics(stats: SimStats, model: str, kv_capacity: int, block_size: int) -> str:
    """The Prometheus text exposition of the simulator, named and labelled like vLLM's."""
    lab = f'engine="0",model_name="{model}"'
    kv = min(1.0, stats.kv_tokens / kv_capacity)
    lines: list[str] = []
    lines += _metric("vllm:num_requests_running", "gauge", "Number of requests in model execution batches.",
                     [f"vllm:num_requests_running{{{lab}}} {float(stats.running)}"])
    lines += _metric("vllm:num_requests_waiting", "gauge", "Number of requests waiting to be processed.",
                     [f"vllm:num_requests_waiting{{{lab}}} {float(stats.waiting)}"])
    lines += _metric("vllm:kv_cache_usage_perc", "gauge", "KV-cache usage. 1 means 100 percent usage.",
                     [f"vllm:kv_cache_usage_perc{{{lab}}} {kv}"])
    lines += _metric("vllm:cache_config_info", "gauge", "Information of the LLMEngine CacheConfig",
                     [f'vllm:cache_config_info{{block_size="{block_size}",engine="0",'
                      f'num_gpu_blocks="{kv_capacity // block_size}"}} 1.0'])
    lines += _counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", lab,
                      stats.prompt_tokens_total)
    lines += _counter("vllm:generation_tokens_total", "Number of generation tokens processed.", lab,
                      stats.generation_tokens_total)
    lines += _metric("vllm:request_success_total", "counter", "Count of successfully processed requests.",
                     [f'vllm:request_success_total{{{lab},finished_reason="{r}"}} {float(stats.finished[r])}'
                      for r in FINISHED_REASONS])
    lines += _counter("vllm:num_preemptions_total", "Cumulative number of preemption from the engine.", lab, 0)
    lines += _counter("vllm:prefix_cache_queries_total", "Prefix cache queries, in terms of number of queried tokens.",
                      lab, stats.prefix_queries)
    lines += _counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
                      lab, stats.prefix_hits)
    for name, hist, text in (
        ("vllm:time_to_first_token_seconds", stats.ttft, "Histogram of time to first token in seconds."),
        ("vllm:e2e_request_latency_seconds", stats.e2e, "Histogram of e2e request latency in seconds."),
        ("vllm:request_queue_time_seconds", stats.queue_time,
         "Histogram of time spent in WAITING phase for request."),
    ):
        lines += _metric(name, "histogram", text, hist.render(name, lab))
    return "\n".join(lines) + "\n"


def _counter(name: str, help_text: str, labels: str, value: float) -> list[str]:
    return _metric(name, "counter", help_text, [f"{name}{{{labels}}} {float(value)}"])
