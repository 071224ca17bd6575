"""Record real vLLM answers to the requests of :mod:`tests.worker.vllm_table` as JSON fixtures.

    python -m tests.worker.record_vllm_fixtures --url http://127.0.0.1:PORT [--only NAME ...]

Run it against a real vLLM serving the tiny model as ``tiny-chat`` (``infercdn worker vllm`` or
``python -m vllm.entrypoints.openai.api_server``, see docs/operations.md).  Each answer is saved
as ``tests/worker/fixtures/vllm/NAME.json``: the request, the status, the content type (and ``Allow`` if sent) and either
the JSON body or the stream's events (``{"event": name or null, "data": json}``) and whether it
ended with ``data: [DONE]``.  Standard library only, so any python can run it."""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.worker.vllm_table import TABLE

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vllm"


def parse_stream(raw: str) -> tuple[list[dict[str, Any]], bool]:
    """SSE blocks -> events; ``event:`` lines (the Responses API) are kept beside the data."""
    events, done = [], False
    for block in raw.split("\n\n"):
        if not block.strip():
            continue
        name, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data = line[len("data: "):]
        if data == "[DONE]":
            done = True
        elif data is not None:
            events.append({"event": name, "data": json.loads(data)})
    return events, done


def record(url: str, method: str, path: str, body: dict[str, Any] | None, stream: bool) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    ctype, allow = headers.get("Content-Type", ""), headers.get("Allow")
    out: dict[str, Any] = {"request": {"method": method, "path": path, "body": body},
                           "status": status, "content_type": ctype}
    if allow is not None:
        out["allow"] = allow
    if ctype.startswith("text/event-stream"):
        out["events"], out["done"] = parse_stream(raw.decode())
    else:
        try:
            out["body"] = json.loads(raw) if raw else None
        except ValueError:
            out["text"] = raw.decode(errors="replace")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="base URL of a real vLLM serving tiny-chat")
    parser.add_argument("--only", nargs="*", help="record only these table entries")
    parser.add_argument("--out", type=Path, default=FIXTURES, help="folder (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, (method, path, body, stream) in TABLE.items():
        if args.only and name not in args.only:
            continue
        answer = record(args.url.rstrip("/"), method, path, body, stream)
        (args.out / f"{name}.json").write_text(json.dumps(answer, indent=1, sort_keys=True) + "\n")
        print(f"{name}: {answer['status']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
