"""W1/W2 load with Debian ``wrk`` (C, far cheaper per request than a Python client).

A Lua script sets the POST body and prints one JSON summary line from ``done()``."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

LUA = """
wrk.method = "POST"
wrk.body = '%(body)s'
wrk.headers["Content-Type"] = "application/json"
%(headers)s
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n', summary.requests, summary.duration,
    summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def script(work: Path, stream: bool, max_tokens: int, headers: list[str]) -> Path:
    body = json.dumps({"model": "tiny-chat", "messages": [{"role": "user", "content": "Say something."}],
                       "max_tokens": max_tokens, "stream": stream, "ignore_eos": True})
    extra = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (h.split(": ", 1) for h in headers))
    path = work / f"wrk-{'stream' if stream else 'json'}-{max_tokens}.lua"
    path.write_text(LUA % {"body": body, "headers": extra})
    return path


def start(url: str, lua: Path, connections: int, threads: int, seconds: float) -> subprocess.Popen:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:.0f}s", "--timeout", "30s",
           "-s", str(lua), url + "/v1/chat/completions"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float) -> dict:
    out, _ = proc.communicate(timeout=timeout)
    for line in out.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[8:])
    raise RuntimeError(f"wrk gave no summary (exit {proc.returncode}): {out[-400:]}")


def merge(parts: list[dict]) -> dict:
    """Sum counters of several wrk runs over the same period (latency: the worst of each)."""
    out = {k: sum(p[k] for p in parts) for k in parts[0] if k not in ("duration_us", "p50_us", "p99_us")}
    out["duration_us"] = max(p["duration_us"] for p in parts)
    out["p50_us"] = max(p["p50_us"] for p in parts)
    out["p99_us"] = max(p["p99_us"] for p in parts)
    return out
