"""Aggregate per-round measurements into medians with min–max, and render the Markdown tables."""
from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

METRICS = ("cpu_per_request_ms", "cpu_per_token_us", "user_per_token_us", "sys_per_token_us",
           "requests_ratio", "tokens_ratio", "ttft_p50_added_ms", "ttft_p99_added_ms", "ttft_p50_ms",
           "ttft_p99_ms", "requests_per_s", "tokens_per_s", "errors", "rss_mib", "client_cpu_util")
# the systems each infercdn system's CPU per request is divided by, round by round
YARDSTICKS = ("nginx", "vllm-router", "pyrelay", "pyrelay-assembled")
CPU_RATIOS = tuple(f"cpu_x_{y}" for y in YARDSTICKS)
FAILOVER = ("failed_requests", "leave_s", "last_failure_after_kill_s", "routed_to_dead_region_after_kill",
            "resumed_streams", "resumed_p50_gap_ms", "resumed_max_gap_ms")


def add_ratios(runs: list[dict]) -> None:
    """Throughput as a ratio to direct, and time to first token added over direct, same round."""
    direct = {(r["round"], r["workload"]): r for r in runs if r["system"] == "direct" and r["status"] == "ok"}
    for r in runs:
        base = direct.get((r["round"], r["workload"]))
        if r["status"] != "ok" or base is None:
            continue
        for key, ratio in (("requests_per_s", "requests_ratio"), ("tokens_per_s", "tokens_ratio")):
            if base.get(key):
                r[ratio] = round(r[key] / base[key], 3)
        for q in ("p50", "p99"):
            mine, theirs = r.get(f"ttft_{q}_ms"), base.get(f"ttft_{q}_ms")
            if mine is not None and theirs is not None:
                r[f"ttft_{q}_added_ms"] = round(mine - theirs, 3)
    # CPU per request of each infercdn system (and its @base) over each yardstick's, same round
    ok = {(r["round"], r["workload"], r["system"]): r for r in runs if r["status"] == "ok"}
    for r in runs:
        if r["status"] != "ok" or not r["system"].startswith("infercdn") or not r.get("cpu_per_request_ms"):
            continue
        for y in YARDSTICKS:
            other = ok.get((r["round"], r["workload"], y))
            if other is not None and other.get("cpu_per_request_ms"):
                r[f"cpu_x_{y}"] = round(r["cpu_per_request_ms"] / other["cpu_per_request_ms"], 2)


def _stat(values: list[float]) -> dict | None:
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": round(statistics.median(values), 4), "min": min(values), "max": max(values),
            "n": len(values)}


def summarise(runs: list[dict]) -> dict:
    grouped: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        grouped[(r["workload"], r["system"])].append(r)
    out: dict[str, dict] = {}
    for (wl, system), rs in grouped.items():
        ok = [r for r in rs if r["status"] == "ok"]
        entry: dict = {"rounds_ok": len(ok), "rounds_failed": len(rs) - len(ok),
                       "failures": sorted({r.get("error", "")[:300] for r in rs if r["status"] != "ok"})}
        for m in METRICS + CPU_RATIOS:
            s = _stat([r.get(m) for r in ok])
            if s:
                entry[m] = s
        for m in FAILOVER:
            s = _stat([r["failover"].get(m) for r in ok if "failover" in r])
            if s:
                entry[m] = s
        out.setdefault(wl, {})[system] = entry
    return out


def _cell(text: str, n: int = 200) -> str:
    return " ".join(text.split()).replace("|", "/")[:n]


def _fmt(entry: dict, key: str, digits: int = 2) -> str:
    s = entry.get(key)
    if not s:
        return "–"
    med, lo, hi = (f"{s[k]:.{digits}f}" for k in ("median", "min", "max"))
    return med if s["n"] == 1 or lo == hi else f"{med} ({lo}–{hi})"


COLUMNS = (("CPU/req ms", "cpu_per_request_ms", 3), ("CPU/token µs", "cpu_per_token_us", 1),
           ("user µs/tok", "user_per_token_us", 1), ("sys µs/tok", "sys_per_token_us", 1),
           ("req/s ×direct", "requests_ratio", 2), ("tok/s ×direct", "tokens_ratio", 2),
           ("+TTFT p50 ms", "ttft_p50_added_ms", 1), ("+TTFT p99 ms", "ttft_p99_added_ms", 1),
           ("errors", "errors", 0), ("RSS MiB", "rss_mib", 0))


def _cpu_ratios(systems: dict[str, dict]) -> list[str]:
    """Each infercdn system's CPU per request as a multiple of each yardstick's in the same round
    (median over rounds): what the issue figures are reported in."""
    present = [y for y in YARDSTICKS if any(f"cpu_x_{y}" in e for e in systems.values())]
    rows = [(name, e) for name, e in systems.items() if any(f"cpu_x_{y}" in e for y in present)]
    if not rows:
        return []
    out = ["", "CPU per request as a multiple of the same round's:", "",
           "| system | " + " | ".join(f"×{y}" for y in present) + " |", "|---" * (len(present) + 1) + "|"]
    out += [f"| {name} | " + " | ".join(_fmt(e, f"cpu_x_{y}", 2) for y in present) + " |" for name, e in rows]
    return out


def markdown(doc: dict) -> str:
    lines = [f"# infercdn bench — {doc['date']}", "",
             f"`{doc['command']}` on {doc['host']['cpus']} CPUs ({doc['host']['kernel']}); "
             f"{doc['rounds']} interleaved round(s); cells are median (min–max) over rounds. "
             "CPU = user+system time of the proxy's whole process tree over the measured window.", ""]
    lines += ["## Systems", "", "| system | version | status |", "|---|---|---|"]
    for name, s in doc["systems"].items():
        lines.append(f"| {name} | {s.get('version') or '–'} | {s['status']}"
                     f"{': ' + _cell(s['error']) if s.get('error') else ''} |")
    summary = doc["summary"]
    for wl, text in doc["workloads"].items():
        if wl not in summary or wl == "W4":
            continue
        lines += ["", f"## {wl}: {text}", "", "| system | " + " | ".join(c[0] for c in COLUMNS) + " |",
                  "|---" * (len(COLUMNS) + 1) + "|"]
        for system, e in summary[wl].items():
            if not e["rounds_ok"]:
                lines.append(f"| {system} | failed: {_cell('; '.join(e['failures']))} |" + " |" * (len(COLUMNS) - 1))
                continue
            lines.append(f"| {system} | " + " | ".join(_fmt(e, k, d) for _, k, d in COLUMNS) + " |")
        lines += _cpu_ratios(summary[wl])
    if "W4" in summary:
        lines += ["", f"## W4: {doc['workloads']['W4']}", "",
                  "| system | failed requests | traffic left dead region after s | last failure after kill s "
                  "| requests routed to dead region after kill | streams resumed on the other region "
                  "| their longest silence ms, p50 / max | CPU/token µs |",
                  "|---|---|---|---|---|---|---|---|"]
        for system, e in summary["W4"].items():
            if not e["rounds_ok"]:
                lines.append(f"| {system} | failed: {'; '.join(e['failures'])[:200]} | | | | | |")
                continue
            lines.append(f"| {system} | {_fmt(e, 'failed_requests', 0)} | {_fmt(e, 'leave_s', 2)} | "
                         f"{_fmt(e, 'last_failure_after_kill_s', 2)} | {_fmt(e, 'routed_to_dead_region_after_kill', 0)} "
                         f"| {_fmt(e, 'resumed_streams', 0)} | {_fmt(e, 'resumed_p50_gap_ms', 0)} / "
                         f"{_fmt(e, 'resumed_max_gap_ms', 0)} | {_fmt(e, 'cpu_per_token_us', 1)} |")
    idle = doc.get("idle")
    if idle:
        lines += ["", "## 10,000 idle-ish streams (infercdn)", ""]
        if idle.get("status") == "ok":
            lines.append(f"{idle['streams_open']} streams open at once (asked {idle['streams_run']}, target "
                         f"{idle['target']}; hard fd limit {idle['nofile_hard_limit']}), upstream "
                         f"{idle['itl_ms']:.0f} ms/token: gateway RSS peak **{idle['rss_peak_mib']:.0f} MiB** "
                         f"({idle['rss_per_stream_kib']:.0f} KiB/stream over {idle['rss_idle_mib']:.0f} MiB idle; "
                         f"projected {idle['rss_projected_target_mib']:.0f} MiB at {idle['target']}; "
                         f"target < 1024 MiB), errors {idle['errors']}, {idle['tokens_per_s']:.0f} tokens/s.")
        else:
            lines.append(f"failed: {idle.get('error')}")
    for prof in doc.get("profiles") or ():
        if prof.get("status") != "ok":
            lines += ["", f"Profile of {prof.get('workload')} failed: {prof.get('error')}"]
            continue
        lines += ["", f"Flame graph of {prof['system']} on {prof['workload']}: `{prof['svg']}`"]
        top = prof.get("self_pct") or []
        if top:
            lines.append("Most samples on top of the stack (self %): "
                         + ", ".join(f"{f} {p}" for f, p in top[:8]) + ".")
    return "\n".join(lines) + "\n"


def save(doc: dict, base: Path, md: str) -> None:
    """``base``.json (everything) and ``base``.md (the tables), and the tables on stdout."""
    base.with_suffix(".json").write_text(json.dumps(doc, indent=1, default=str))
    base.with_suffix(".md").write_text(md)
    print(md)
