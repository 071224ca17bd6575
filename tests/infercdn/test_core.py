"""The compiled core (infercdn/core.py): a build is used only when it was made from the sources in
the tree; otherwise the process runs them as Python and says why; INFERCDN_CORE chooses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infercdn import core

ROOT = Path(__file__).resolve().parents[2]
PROBE = ("import infercdn, routing.plan, gateway.forward.relay; "
         "print(infercdn.CORE.kind, routing.plan.__file__, gateway.forward.relay.__file__, sep='|')")


def probe(code: str = PROBE, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in (core.ENV, core.DIR_ENV)}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**full, **env}, capture_output=True,
                          text=True, timeout=60)


def fake_build(tmp_path: Path) -> tuple[Path, Path]:
    """A tree with one module per compiled package and a build whose manifest matches it
    (the extension files are empty: only :func:`core.stale` reads this build)."""
    root, build = tmp_path / "tree", tmp_path / "build"
    files = {"routing.plan": "x = 1\n", "routing.policies.cost": "y = 2\n", "gateway.forward.relay": "z = 3\n"}
    for name, text in files.items():
        src = root.joinpath(*name.split(".")).with_suffix(".py")
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(text)
        (src.parent / "__init__.py").write_text("")
    write_build(build, core.sources(root), b"")
    return root, build


def write_build(build: Path, sources: dict[str, Path], content: bytes) -> None:
    """A build of ``sources`` whose manifest is right and whose extension files hold ``content``."""
    suffix = core._ext_suffix()
    modules = {}
    for name, src in sources.items():
        so = Path(*name.split(".")).with_suffix(suffix)
        (build / so).parent.mkdir(parents=True, exist_ok=True)
        (build / so).write_bytes(content)
        modules[name] = {"file": str(so), "sha256": core._sha256(src)}
    (build / f"{core.GROUP}__mypyc{suffix}").write_bytes(content)
    (build / core.MANIFEST).write_text(json.dumps({
        "ext_suffix": suffix, "library": f"{core.GROUP}__mypyc{suffix}", "library_module": f"{core.GROUP}__mypyc",
        "modules": modules, "mypy": "test"}))


def test_a_build_serves_exactly_the_sources_it_was_made_from(tmp_path: Path) -> None:
    root, build = fake_build(tmp_path)
    assert sorted(core.sources(root)) == ["gateway.forward.relay", "routing.plan", "routing.policies.cost"]
    assert core.stale(build, root) is None
    (root / "routing" / "plan.py").write_text("x = 2\n")  # an edit
    assert core.stale(build, root) == "routing/plan.py changed since the build"
    (root / "routing" / "plan.py").write_text("x = 1\n")
    assert core.stale(build, root) is None
    (root / "gateway" / "forward" / "new.py").write_text("")  # a module the build lacks
    assert "modules added or removed since the build: gateway.forward.new" in str(core.stale(build, root))
    (root / "gateway" / "forward" / "new.py").unlink()
    manifest = json.loads((build / core.MANIFEST).read_text())
    (build / core.MANIFEST).write_text(json.dumps({**manifest, "ext_suffix": ".cpython-399-x.so"}))
    assert "built for .cpython-399-x.so" in str(core.stale(build, root))
    assert "no compiled build in" in str(core.stale(tmp_path / "nowhere", root))


def test_compiled_required_without_a_build_stops_the_process_saying_why(tmp_path: Path) -> None:
    done = probe(INFERCDN_CORE="compiled", INFERCDN_CORE_DIR=str(tmp_path))
    assert done.returncode != 0 and f"INFERCDN_CORE=compiled: no compiled build in {tmp_path}" in done.stderr
    done = probe(INFERCDN_CORE="fast")
    assert done.returncode != 0 and "INFERCDN_CORE='fast': expected one of auto, python, compiled" in done.stderr
    done = probe(INFERCDN_CORE_DIR=str(tmp_path))  # auto: Python, and the reason is kept
    assert done.returncode == 0 and done.stdout.split("|")[0] == "python"
    status = subprocess.run([sys.executable, "-m", "infercdn.cli", "core", "status", "--dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert status.returncode == 1 and "processes run the core as Python" in status.stdout


def test_the_build_in_the_tree_is_what_processes_run() -> None:
    """With a fresh build (``make install`` makes one where a C compiler is), a process that imports
    the composition root runs the compiled modules; INFERCDN_CORE=python, or a core module imported
    before the choice, keeps it on the sources."""
    why = core.stale(core.default_dir())
    if why is not None:
        if os.environ.get("INFERCDN_REQUIRE_COMPILED") == "1":
            pytest.fail(f"INFERCDN_REQUIRE_COMPILED=1 and the compiled core is not usable: {why}")
        pytest.skip(f"no usable compiled core: {why}")
    kind, plan, relay = probe().stdout.strip().split("|")
    assert kind == "compiled" and plan.endswith(core._ext_suffix()) and relay.endswith(core._ext_suffix())
    assert str(core.default_dir()) in plan
    kind, plan, relay = probe(INFERCDN_CORE="python").stdout.strip().split("|")
    assert (kind, plan, relay) == ("python", str(ROOT / "routing" / "plan.py"), str(ROOT / "gateway" / "forward" / "relay.py"))
    early = probe("import routing.plan, infercdn; print(infercdn.CORE.kind, infercdn.CORE.reason, routing.plan.__file__)")
    assert early.stdout.startswith("python ") and "imported before the build was chosen" in early.stdout
    assert early.stdout.strip().endswith("routing/plan.py")


def test_a_build_that_does_not_load_leaves_the_process_on_python(tmp_path: Path) -> None:
    """A manifest that matches the sources over extensions that cannot load (a copy cut short, a
    library of another machine): the process starts on the sources and says why; required, it stops."""
    write_build(tmp_path, core.sources(), b"not an ELF file")
    assert core.stale(tmp_path) is None  # by its manifest, a fresh build
    probe_reason = ("import infercdn, routing.plan; "
                    "print(infercdn.CORE.kind, routing.plan.__file__.endswith('.py'), infercdn.CORE.reason, sep='|')")
    kind, source, reason = probe(probe_reason, INFERCDN_CORE_DIR=str(tmp_path)).stdout.strip().split("|")
    assert (kind, source) == ("python", "True") and f"the build in {tmp_path} does not load" in reason
    done = probe(INFERCDN_CORE="compiled", INFERCDN_CORE_DIR=str(tmp_path))
    assert done.returncode != 0 and "does not load" in done.stderr
