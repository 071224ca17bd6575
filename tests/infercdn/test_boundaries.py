"""Which package may import which: ``routing`` imports none of the others; ``worker`` and
``loadtest`` never the gateway; ``gateway`` neither ``worker``, ``loadtest`` nor the composition
root ``infercdn`` (no lazy import, no importlib string); and a worker host runs ``infercdn
worker ...`` without the gateway in the process."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "routing": {"gateway", "worker", "loadtest", "infercdn", "aiohttp"},
    "worker": {"gateway", "infercdn", "loadtest"},
    "loadtest": {"gateway", "infercdn"},
    "gateway": {"worker", "loadtest", "infercdn"},
}


def imported(path: Path) -> set[str]:
    """Top-level packages ``path`` imports anywhere (functions included), and those named by a
    dotted string constant (what importlib would load)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and is_module(node.value):
            names.add(node.value.split(".")[0])
    return names


def is_module(text: str) -> bool:
    """``text`` names a module of this repository ("worker.sim.cli"; not a logger's "infercdn.workers")."""
    if "." not in text or not text.replace(".", "").replace("_", "").isalnum():
        return False
    path = ROOT.joinpath(*text.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_one_way(package: str) -> None:
    wrong = {str(p.relative_to(ROOT)): sorted(imported(p) & FORBIDDEN[package])
             for p in sorted((ROOT / package).rglob("*.py"))}
    assert {p: w for p, w in wrong.items() if w} == {}


def test_the_import_scan_sees_lazy_imports_and_importlib_strings(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from worker.sim import Simulator\n    return importlib.import_module('loadtest.cli')\n"
                   "log = logging.getLogger('infercdn.workers')\n")
    assert imported(src) == {"worker", "loadtest"}


@pytest.mark.parametrize("command", [["worker", "vllm", "--model", "m"], ["worker", "sim"],
                                     ["worker", "tiny-model", "out"]])
def test_worker_commands_run_without_the_gateway(command: list[str]) -> None:
    """What `infercdn worker ...` imports (the CLI, then the command's module) leaves ``gateway``
    out of ``sys.modules``: a GPU host needs vLLM and the worker, not the gateway."""
    code = ("import importlib, json, sys\n"
            "from infercdn.cli import build_parser\n"
            f"args = build_parser({command!r}).parse_args({command!r})\n"
            "importlib.import_module(args._module)\n"
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    loaded = set(json.loads(out.stdout))
    assert {"infercdn", "worker"} <= loaded  # the command's module was imported: the check can see it
    assert not loaded & {"gateway", "loadtest"}, sorted(loaded & {"gateway", "loadtest"})
