"""Processes the bench starts: spawning, readiness, per-tree CPU and memory from /proc, stopping.

CPU is read from ``/proc/<pid>/stat`` (utime, stime, in clock ticks) for a process and all its
descendants, sampled before and after a measured window; children that exit inside the window
are counted through ``cutime``/``cstime`` of their (waiting) parent."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Cpu:
    user: float  # seconds
    system: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)

    @property
    def total(self) -> float:
        return self.user + self.system


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # fields from 3 (state) on


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields:
                kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    kids = _children()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def tree_cpu(pid: int) -> Cpu:
    user = system = 0
    for p in tree(pid):
        f = _stat(p)
        if f:  # utime stime cutime cstime are fields 14-17 (indexes 11-14 here)
            user += int(f[11]) + int(f[13])
            system += int(f[12]) + int(f[14])
    return Cpu(user / TICK, system / TICK)


def tree_rss(pid: int) -> int:
    """Resident bytes summed over the tree (shared pages counted once per process)."""
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Wait until something accepts on 127.0.0.1:port; raise with the log tail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}: {tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout:.0f} s: {tail(log)}")


def tail(log: Path | None, n: int = 600) -> str:
    if log is None or not log.exists():
        return ""
    return log.read_text(errors="replace")[-n:].strip()


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: str | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so the whole tree can be signalled), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def stop(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    """SIGTERM the process group of ``proc``, then SIGKILL it after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
