"""``infercdn gateway --workers 2`` as operators run it: a subprocess with two serving processes on
one port, in front of in-process simulators."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gateway.workers import RUN_PREFIX, clean_stale_runs, default_workers
from tests.conftest import LONDON, SINGAPORE, base_config
from tests.gateway.workers_fixture import BODY, ROOT, by_worker, chat, metric_total, workers_gateway

HEALTH_INTERVAL_S = 0.2


def write_config(path: Path, geoip_db: Path, pools: dict[str, list[str]], **gateway: Any) -> dict[str, Any]:
    data = base_config(pools, geoip={"database": str(geoip_db)},
                       health={"interval_s": HEALTH_INTERVAL_S, "timeout_s": 0.5, "rise": 1, "fall": 1},
                       load={"enabled": True, "scrape_interval_s": HEALTH_INTERVAL_S, "stale_s": 2.0})
    data["gateway"].update(access_log="off", **gateway)
    path.write_text(yaml.safe_dump(data))
    return data


async def test_both_workers_serve_one_prober_and_metrics_sum(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    """Connections land on both workers; the pool sees the health probes of one prober, not
    two; /metrics on either worker counts the requests of both."""
    sim = await sim_factory()
    config = tmp_path / "gw.yaml"
    write_config(config, geoip_db, {"eu-west": [sim.url]})
    async with workers_gateway(config) as gw:
        assert len(gw.pids) == 2 and os.getpid() not in gw.pids
        answers = await by_worker(gw.base, chat(gw.base, LONDON))
        assert answers == {"0": (200, "eu-west"), "1": (200, "eu-west")}
        served = sim.stats.paths["/v1/chat/completions"]
        assert served >= 2

        async def ready(session: aiohttp.ClientSession) -> tuple[str, int]:
            async with session.get(gw.base + "/readyz") as r:  # ready: health learnt from the prober
                return r.headers["x-infercdn-worker"], r.status
        assert await by_worker(gw.base, ready) == {"0": 200, "1": 200}

        before = dict(sim.stats.paths)
        window = 2.0
        await asyncio.sleep(window)  # a rate is measured over time: one prober, one probe per interval
        probes = sim.stats.paths["/health"] - before["/health"]
        scrapes = sim.stats.paths["/metrics"] - before.get("/metrics", 0)
        assert 1 <= probes <= window / HEALTH_INTERVAL_S + 3, probes  # two probers would send ~20
        assert 1 <= scrapes <= window / HEALTH_INTERVAL_S + 3, scrapes  # load scrapes: as many at most

        async def metrics(session: aiohttp.ClientSession) -> tuple[str, float]:
            async with session.get(gw.base + "/metrics") as r:
                return r.headers["x-infercdn-worker"], metric_total(await r.text(), "infercdn_requests_total")
        assert await by_worker(gw.base, metrics) == {"0": float(served), "1": float(served)}
        assert await gw.stop() == 0


async def test_one_worker_is_the_single_process_of_before(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    """--workers 1: no supervisor, no child process, no worker header."""
    sim = await sim_factory()
    config = tmp_path / "gw.yaml"
    write_config(config, geoip_db, {"eu-west": [sim.url]})
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infercdn.cli", "gateway", "--config", str(config), "--port", "0", "--workers", "1",
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(30):
            line = (await proc.stdout.readline()).decode()
        assert "listening on" in line and "workers" not in line, line
        base = line.split("listening on ")[1].split()[0]
        async with aiohttp.ClientSession() as session:
            async with session.post(base + "/v1/chat/completions", json=BODY) as r:
                assert r.status == 200 and "x-infercdn-worker" not in r.headers
        assert not Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_dead_worker_is_restarted(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    """SIGKILL of worker 0 (the host's prober): the supervisor starts it again, it serves and
    probes again, and the requests counted before its death stay counted."""
    sim = await sim_factory()
    config = tmp_path / "gw.yaml"
    write_config(config, geoip_db, {"eu-west": [sim.url]})
    async with workers_gateway(config) as gw:
        await by_worker(gw.base, chat(gw.base, LONDON))
        served = sim.stats.paths["/v1/chat/completions"]
        os.kill(gw.pids[0], signal.SIGKILL)
        await gw.log_has(f"worker 0 (pid {gw.pids[0]}) exited with -9")
        started = (await gw.log_has("worker 0 started, pid", count=2))[-1]
        new_pid = int(started.rsplit("pid ", 1)[1])
        await gw.log_has(f"worker 0 (pid {new_pid}) serving")
        answers = await by_worker(gw.base, chat(gw.base, LONDON))
        assert answers == {"0": (200, "eu-west"), "1": (200, "eu-west")}
        probes = sim.stats.paths["/health"]
        for _ in range(100):  # the new prober probes (the simulator signals no event for /health)
            if sim.stats.paths["/health"] >= probes + 2:
                break
            await asyncio.sleep(HEALTH_INTERVAL_S / 2)
        assert sim.stats.paths["/health"] >= probes + 2
        total = sim.stats.paths["/v1/chat/completions"]
        assert total > served
        async with aiohttp.ClientSession() as session, session.get(gw.base + "/metrics") as r:
            page = await r.text()
        assert metric_total(page, "infercdn_requests_total") == total  # the dead worker's too
        assert 'infercdn_worker_restarts_total{worker="0"} 1.0' in page
        assert await gw.stop() == 0


async def test_sigterm_drains_every_worker_and_streams_finish(tmp_path: Path, geoip_db: Path,
                                                              sim_factory) -> None:
    """SIGTERM to the supervisor mid-stream: /readyz says draining, the stream in flight ends
    with [DONE], and the supervisor exits 0 once every worker has drained."""
    sim = await sim_factory(itl_ms=20.0)
    config = tmp_path / "gw.yaml"
    write_config(config, geoip_db, {"eu-west": [sim.url]}, drain_notice_s=1.0, drain_timeout_s=30)
    async with workers_gateway(config) as gw:
        body = {**BODY, "max_tokens": 60, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(gw.base + "/v1/chat/completions", json=body) as stream:
                assert stream.status == 200
                got = await stream.content.readuntil(b"\n\n")
                gw.proc.send_signal(signal.SIGTERM)
                await gw.log_has("draining: /readyz answers 503", count=2)
                got += await stream.read()
        assert got.rstrip().endswith(b"data: [DONE]")
        assert got.count(b'"content"') >= 60
        await gw.log_has("stopped, ", count=2)
        async with asyncio.timeout(30):  # (a second SIGTERM would cut the drain short)
            assert await gw.proc.wait() == 0  # from what is left in the pipe


async def test_sighup_reloads_every_worker(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    """An operator drains a pool in the file and sends SIGHUP: both workers route around it;
    a broken file is refused once, by the supervisor, and both keep their config."""
    near, far = await sim_factory(), await sim_factory()
    config = tmp_path / "gw.yaml"
    data = write_config(config, geoip_db, {"ap-southeast": [near.url], "eu-west": [far.url]})
    async with workers_gateway(config) as gw:
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "ap-southeast")}
        data["pools"][0]["draining"] = True
        config.write_text(yaml.safe_dump(data))
        gw.proc.send_signal(signal.SIGHUP)
        await gw.log_has(f"config reloaded from {config}", count=2)
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "eu-west")}

        config.write_text(config.read_text().replace("interval_s: 0.2", "interval_s: -1"))
        gw.proc.send_signal(signal.SIGHUP)
        await gw.log_has("config reload refused")
        await gw.log_has("health.interval_s = -1")
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "eu-west")}
        assert len(gw.lines("config reload refused")) == 1
        assert len(gw.lines("config reloaded from")) == 2


async def test_admin_reload_on_one_worker_reloads_all(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    near, far = await sim_factory(), await sim_factory()
    config = tmp_path / "gw.yaml"
    data = write_config(config, geoip_db, {"ap-southeast": [near.url], "eu-west": [far.url]})
    async with workers_gateway(config) as gw:
        await by_worker(gw.base, chat(gw.base, SINGAPORE))
        data["pools"][0]["draining"] = True
        config.write_text(yaml.safe_dump(data))
        async with aiohttp.ClientSession() as session, session.post(gw.base + "/admin/reload", json={}) as r:
            assert r.status == 200
        await gw.log_has(f"config reloaded from {config}", count=2)
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "eu-west")}


def configmap_dir(root: Path, text: str) -> Path:
    """A folder laid out as Kubernetes mounts a ConfigMap: gw.yaml -> ..data/gw.yaml,
    ..data -> ..<version>."""
    (root / "..v1").mkdir(parents=True)
    (root / "..v1" / "gw.yaml").write_text(text)
    (root / "..data").symlink_to("..v1")
    (root / "gw.yaml").symlink_to("..data/gw.yaml")
    return root / "gw.yaml"


def configmap_update(root: Path, version: str, text: str) -> None:
    """The kubelet's update: a new version folder, then an atomic swap of the ..data symlink."""
    (root / version).mkdir()
    (root / version / "gw.yaml").write_text(text)
    (root / "..data_tmp").symlink_to(version)
    os.replace(root / "..data_tmp", root / "..data")


async def test_config_watch_reloads_every_worker_once(tmp_path: Path, geoip_db: Path, sim_factory) -> None:
    """A ConfigMap update (the ..data symlink swapped) reaches both workers, through one reload."""
    near, far = await sim_factory(), await sim_factory()
    data = write_config(tmp_path / "plain.yaml", geoip_db, {"ap-southeast": [near.url], "eu-west": [far.url]},
                        config_watch_s=0.1)
    config = configmap_dir(tmp_path / "cm", yaml.safe_dump(data))
    async with workers_gateway(config) as gw:
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "ap-southeast")}
        data["pools"][0]["draining"] = True
        configmap_update(tmp_path / "cm", "..v2", yaml.safe_dump(data))
        await gw.log_has(f"config reloaded from {config}", count=2)
        assert set((await by_worker(gw.base, chat(gw.base, SINGAPORE))).values()) == {(200, "eu-west")}
        assert len(gw.lines(f"config file {config} changed")) == 1
        assert len(gw.lines("reloading 2 workers")) == 1


def test_default_workers_follows_affinity_and_cgroup_quota(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    assert default_workers(tmp_path) == cpus  # no cgroup files
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")  # cgroup v1, unlimited
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert default_workers(tmp_path) == cpus
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")  # v1, half a CPU
    assert default_workers(tmp_path) == 1
    quota = tmp_path / "cpu.max"  # cgroup v2 wins where present
    quota.write_text("max 100000\n")
    assert default_workers(tmp_path) == cpus
    quota.write_text("50000 100000\n")
    assert default_workers(tmp_path) == 1
    quota.write_text(f"{150000 * cpus} 100000\n")
    assert default_workers(tmp_path) == cpus


def test_run_directories_of_killed_supervisors_are_removed(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    for name, pid in (("dead", str(dead.pid)), ("alive", str(os.getpid())), ("unreadable", "x")):
        run = tmp_path / (RUN_PREFIX + name)
        run.mkdir()
        (run / "supervisor.pid").write_text(pid)
    (tmp_path / "other").mkdir()
    clean_stale_runs(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [RUN_PREFIX + "alive", RUN_PREFIX + "unreadable", "other"]


async def test_up_with_workers_runs_the_pools_once() -> None:
    """`infercdn up --workers 2`: one set of simulated pools, two gateway processes in front."""
    from tests.infercdn.test_cli import start_up, stop_up

    proc, lines, base = await start_up("--workers", "2")
    try:
        assert sum(1 for line in lines if "-sim: kill " in line) == 3
        assert await by_worker(base, chat(base, SINGAPORE)) == {"0": (200, "ap-southeast"),
                                                               "1": (200, "ap-southeast")}
    finally:
        await stop_up(proc)
    assert proc.returncode == 0


async def test_tenant_limits_hold_for_the_host_not_per_worker(tmp_path: Path, geoip_db: Path,
                                                              sim_factory) -> None:
    """A tenant with a burst of 2 gets 2 requests from the host, not 2 from each worker."""
    sim = await sim_factory()
    config = tmp_path / "gw.yaml"
    data = write_config(config, geoip_db, {"eu-west": [sim.url]})
    data["auth"] = {"tenants": [{"name": "acme", "api_keys": ["sk-acme"], "requests_per_s": 0.001, "burst": 2}]}
    config.write_text(yaml.safe_dump(data))
    async with workers_gateway(config) as gw:
        async def call(session: aiohttp.ClientSession) -> tuple[str, int]:
            async with session.post(gw.base + "/v1/chat/completions", json=BODY,
                                    headers={"Authorization": "Bearer sk-acme"}) as r:
                await r.read()
                return r.headers["x-infercdn-worker"], r.status
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
            first = [(await call(session))[1] for _ in range(2)]
        assert first == [200, 200]
        assert await by_worker(gw.base, call) == {"0": 429, "1": 429}
        assert sim.stats.paths["/v1/chat/completions"] == 2


def test_workers_add_the_launched_vllm_endpoints_to_every_config_they_read(tmp_path: Path) -> None:
    """`infercdn up --engine vllm --workers N`: the supervisor launched vLLM once; each worker
    adds its address to the pool at start and at every reload, after the command's preparation."""
    from gateway.config import EndpointCfg, load_config
    from gateway.server import vllm_default
    from gateway.worker_proc import config_transform
    from gateway.workers import WorkerSpec

    cfg = vllm_default(load_config(None))
    pool = next(p for p in cfg.pools if p.launch is not None)
    launched = EndpointCfg(id=f"{pool.name}-vllm0", url="http://127.0.0.1:9", health_url="http://127.0.0.1:10/health")
    spec = WorkerSpec("cfg.yaml", "last.yaml", "127.0.0.1", 1, "hub.sock",
                      endpoints={pool.name: [launched.model_dump()]}, prepare="vllm_default")
    spec.dump(tmp_path / "spec.json")
    out = config_transform(WorkerSpec.load(tmp_path / "spec.json"))(load_config(None))
    mine = next(p for p in out.pools if p.name == pool.name)
    assert mine.launch is not None and mine.endpoints[-1] == launched


class FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid, self.returncode, self.signals = pid, None, []

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)


async def test_a_reload_waits_for_a_worker_still_starting(tmp_path: Path) -> None:
    """SIGHUP before a worker installed its handler would end it: the supervisor holds the
    reload until the worker says it serves."""
    from gateway.config import load_config
    from gateway.workers import Supervisor, WorkerSpec

    sup = Supervisor(2, WorkerSpec("c.yaml", "l.yaml", "127.0.0.1", 1, str(tmp_path / "hub")), tmp_path,
                     load_config(None))
    serving, starting = sup.children
    serving.proc, starting.proc = FakeProc(1), FakeProc(2)  # type: ignore[assignment]
    serving.ready.set()
    sup._reload()
    assert serving.proc.signals == [signal.SIGHUP] and starting.proc.signals == []  # type: ignore[union-attr]
    assert starting.reload_pending
    hub = await asyncio.start_unix_server(sup._link, str(tmp_path / "hub"))
    try:
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "hub"))
        writer.write(b'{"kind": "hello", "index": 1}\n{"kind": "ready", "index": 1}\n')
        await writer.drain()
        async with asyncio.timeout(5):
            await starting.ready.wait()
        assert starting.proc.signals == [signal.SIGHUP] and not starting.reload_pending  # type: ignore[union-attr]
        writer.close()
    finally:
        hub.close()


async def test_a_stop_signal_while_the_workers_start_is_kept() -> None:
    """`infercdn gateway --workers N` catches SIGTERM before its workers serve: as PID 1 of a
    container a signal without a handler is ignored, and one that came while they started was
    lost (the workers then served on, never drained).  A second signal cuts the drain short."""
    import os
    import signal as signals_module

    from gateway.workers import StopSignals

    class Supervisor:
        interrupted = 0

        def interrupt(self) -> None:
            self.interrupted += 1

    loop = asyncio.get_running_loop()
    signals = StopSignals()
    try:
        os.kill(os.getpid(), signals_module.SIGTERM)  # the workers are still starting
        for _ in range(100):  # the handler runs on the loop (bounded: 1 s)
            if signals.stop.is_set():
                break
            await asyncio.sleep(0.01)
        sup = Supervisor()
        await asyncio.wait_for(signals.wait(sup), 1)  # up: it returns at once, the drain begins
        os.kill(os.getpid(), signals_module.SIGTERM)
        for _ in range(100):
            if sup.interrupted:
                break
            await asyncio.sleep(0.01)
        assert sup.interrupted == 1
    finally:
        for sig in (signals_module.SIGINT, signals_module.SIGTERM):
            loop.remove_signal_handler(sig)
