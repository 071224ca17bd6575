"""The bench report divides each infercdn system's CPU per request by the yardsticks' of the
same round (not by medians taken apart), and renders that table under the workload's."""
from __future__ import annotations

from bench.report import add_ratios, markdown, summarise


def _run(rnd: int, system: str, cpu: float) -> dict:
    return {"round": rnd, "workload": "W1", "system": system, "status": "ok", "cpu_per_request_ms": cpu,
            "requests_per_s": 100.0, "tokens_per_s": 6400.0}


def test_cpu_ratios_are_taken_round_by_round_and_rendered() -> None:
    runs = [_run(1, "direct", 0.0), _run(1, "nginx", 0.02), _run(1, "pyrelay", 0.025), _run(1, "infercdn", 0.1),
            _run(2, "direct", 0.0), _run(2, "nginx", 0.04), _run(2, "pyrelay", 0.05), _run(2, "infercdn", 0.12),
            _run(2, "infercdn@base", 0.2)]
    add_ratios(runs)
    assert [r.get("cpu_x_nginx") for r in runs if r["system"] == "infercdn"] == [5.0, 3.0]
    assert "cpu_x_vllm-router" not in runs[3] and "cpu_x_nginx" not in runs[1]  # no such round; not infercdn
    summary = summarise(runs)
    assert summary["W1"]["infercdn"]["cpu_x_pyrelay"]["median"] == 3.2  # (4.0 + 2.4) / 2
    md = markdown({"date": "d", "command": "c", "host": {"cpus": 2, "kernel": "k"}, "rounds": 2,
                   "systems": {}, "summary": summary, "workloads": {"W1": "w"}})
    assert "| system | ×nginx | ×pyrelay |" in md
    assert "| infercdn | 4.00 (3.00–5.00) | 3.20 (2.40–4.00) |" in md
    assert "| infercdn@base | 5.00 | 4.00 |" in md
