"""A self-contained HTML report rendered from the JSON report alone (inline SVG, inline CSS)."""
from __future__ import annotations

from html import escape

from .svg import PALETTE, Series, line_chart

_CSS = """body{font-family:sans-serif;margin:24px;color:#111;max-width:1200px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f3f4f6}td:first-child,th:first-child{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:12px}
.warn{color:#b91c1c;font-weight:bold}.ok{color:#15803d}code{background:#f3f4f6;padding:1px 4px}"""


def render_html(report: dict) -> str:
    cfg = report["config"]
    title = f"infercdn loadtest — {cfg['url']} — {report['model']}"
    sections = [
        f"<h1>{escape(title)}</h1><p>{escape(report['generated_at'])} · schema <code>{report['schema']}</code></p>",
        _kv_table("Run", _run_summary(report)),
        "<h2>Latency (ms)</h2>" + _latency_table(report["latency_ms"]),
        '<div class="charts">' + "".join(_cdf_charts(report["cdf_ms"])) + "</div>",
        "<h2>Throughput over time</h2><div class=\"charts\">" + "".join(_timeline_charts(report["timeline"], report["totals"]["duration_s"])) + "</div>",
        "<h2>Routing: client region × serving region</h2>" + _matrix_table(report["routing_matrix"]),
        "<h2>By client region</h2>" + _group_table(report["by_client_region"]),
        "<h2>By serving region</h2>" + _group_table(report["by_serving_region"]),
        "<h2>Errors</h2>" + _errors(report["errors"]),
        "<h2>Generator health</h2>" + _generator(report["generator"]),
    ]
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(sections)}</body></html>")


def write_html(report: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(render_html(report))


def _run_summary(report: dict) -> dict:
    t, cfg = report["totals"], report["config"]
    load = f"open loop, {cfg['rate']} req/s {cfg['arrival']}" if cfg["mode"] == "open" \
        else f"closed loop, {cfg['concurrency']} users"
    return {
        "load": load, "endpoint": f"{cfg['endpoint']} ({'stream' if cfg['stream'] else 'non-stream'})",
        "prompt / max tokens": f"{cfg['prompt_tokens']} / {cfg['max_tokens']}",
        "requests (ok / errors / cancelled)": f"{t['requests']} ({t['ok']} / {t['errors']} / {t['cancelled']})",
        "duration": f"{t['duration_s']:.2f} s", "requests/s": t["requests_per_s"],
        "output tokens/s": t["output_tokens_per_s"], "failovers seen": t["failovers"],
    }


def _kv_table(caption: str, rows: dict) -> str:
    body = "".join(f"<tr><td>{escape(str(k))}</td><td>{escape(str(v))}</td></tr>" for k, v in rows.items())
    return f"<h2>{escape(caption)}</h2><table>{body}</table>"


def _table(head: list[str], rows: list[list[object]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _cell(v: object) -> str:
    if v is None:
        return "–"
    return escape(f"{v:.2f}" if isinstance(v, float) else str(v))


def _latency_table(lat: dict) -> str:
    cols = ["count", "mean", "p50", "p90", "p99", "max"]
    names = {"ttft": "time to first token", "itl": "inter-token latency", "e2e": "end to end"}
    return _table(["metric", *cols], [[names[k], *(lat[k][c] for c in cols)] for k in ("ttft", "itl", "e2e")])


def _cdf_charts(cdfs: dict) -> list[str]:
    pct = cdfs["percents"]
    charts = []
    for key, name in (("ttft", "Time to first token"), ("itl", "Inter-token latency"), ("e2e", "End-to-end latency")):
        values = cdfs[key]
        log_x = bool(values) and values[0] > 0 and values[-1] / max(values[50], 1e-9) > 20
        series = [Series(name, values, pct[: len(values)], PALETTE[0])] if values else []
        charts.append(line_chart(f"{name} CDF", series, "ms" + (" (log)" if log_x else ""), "percent",
                                 log_x=log_x, y_max=100.0))
    return charts


def _timeline_charts(timeline: list[dict], duration_s: float) -> list[str]:
    """Per-second rates at bucket centres; the last, partial second is scaled to its length."""
    ts, ok, errors, tokens = [], [], [], []
    for row in timeline:
        span = min(1.0, duration_s - row["t"])
        if span < 0.25:
            continue
        ts.append(row["t"] + span / 2)
        ok.append(row["ok"] / span)
        errors.append(row["errors"] / span)
        tokens.append(row["tokens"] / span)
    reqs = [Series("ok req/s", ts, ok, PALETTE[0]), Series("errors/s", ts, errors, PALETTE[1])]
    toks = [Series("output tokens/s", ts, tokens, PALETTE[2])]
    return [line_chart("Requests completed per second", reqs, "seconds", "per second"),
            line_chart("Tokens per second (by completion)", toks, "seconds", "tokens/s")]


def _matrix_table(matrix: dict) -> str:
    serving = matrix["serving_regions"]
    th = "".join(f"<th>{escape(s)}</th>" for s in ["client \\ serving", *serving])
    rows = []
    for client in matrix["client_regions"]:
        row = matrix["counts"][client]
        total = sum(row.values()) or 1
        cells = "".join(_heat_cell(row[s], row[s] / total) for s in serving)
        rows.append(f"<tr><td>{escape(client)}</td>{cells}</tr>")
    return f"<table><tr>{th}</tr>{''.join(rows)}</table><p>cells: requests (share of the client region's row)</p>"


def _heat_cell(count: int, share: float) -> str:
    alpha = 0.08 + 0.8 * share if count else 0.0
    color = "#fff" if share > 0.6 else "#111"
    return (f'<td style="background:rgba(37,99,235,{alpha:.2f});color:{color}">'
            f"{count} ({share:.0%})</td>")


def _group_table(groups: dict) -> str:
    head = ["region", "requests", "ok", "errors", "failovers", "tokens", "ttft p50", "ttft p99", "e2e p50", "e2e p99"]
    rows = [[name, g["requests"], g["ok"], g["errors"], g["failovers"], g["output_tokens"], g["ttft_ms"]["p50"],
             g["ttft_ms"]["p99"], g["e2e_ms"]["p50"], g["e2e_ms"]["p99"]] for name, g in groups.items()]
    return _table(head, rows)


def _errors(errors: dict) -> str:
    if not errors:
        return '<p class="ok">no errors</p>'
    return _table(["kind", "count"], [[k, v] for k, v in errors.items()])


def _generator(gen: dict) -> str:
    verdict = ('<p class="warn">the generator was saturated: figures may understate the target</p>'
               if gen["saturated"] else '<p class="ok">the generator kept pace (not saturated)</p>')
    lag, loop = gen["schedule_lag_ms"], gen["loop_lag_ms"]
    rows = [["schedule lag (open loop)", lag["count"], lag["p50"], lag["p99"], lag["max"]],
            ["event-loop lag", loop["count"], loop["p50"], loop["p99"], loop["max"]]]
    late = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in gen["late_requests"].items())
    cpu = (f"CPU {gen['cpu_user_s']:.2f} s user + {gen['cpu_sys_s']:.2f} s system over {gen['wall_s']:.2f} s "
           f"({gen['cpu_util']:.0%} of one core), event loop {escape(gen['event_loop'])}")
    return verdict + _table(["lag (ms)", "samples", "p50", "p99", "max"], rows) + \
        f"<p>late requests — {escape(late)}</p><p>{cpu}</p>"
