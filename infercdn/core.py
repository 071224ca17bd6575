"""Which build of the core this process runs: ``routing/`` and ``gateway/forward/`` as Python, or
compiled by mypyc into C extensions (the same source, typed for ``mypy --strict``; about a fifth
less CPU per request on the forwarding path, docs/bench.md).

``infercdn core build`` compiles them into ``build/core/`` (``make install`` does it;
where there is no C compiler or mypyc the build is skipped, saying why, and everything runs as
Python).  Importing the composition root (``infercdn``) activates the build before ``routing`` or
``gateway`` is imported: a meta-path finder hands out the compiled modules, all of them or none.
A build is used only when it was made from exactly the sources in the tree (each file's SHA-256
is in its manifest) by this Python's ABI; an edited file makes it stale and the process runs as
Python until the next build (``infercdn`` says so on stderr).

``INFERCDN_CORE`` chooses: ``auto`` (the default: compiled when a fresh build is there),
``python`` (never compiled), ``compiled`` (fail at start unless the compiled build runs).
``INFERCDN_CORE_DIR`` moves the build (default ``build/core`` in the tree).

This module imports neither ``routing`` nor ``gateway``."""
from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# packages whose modules are compiled (their __init__ stays Python: it is what imports them)
PACKAGES = ("routing", "routing.policies", "gateway.forward")
GROUP = "infercdn_core"  # mypyc's shared library: infercdn_core__mypyc
MANIFEST = "manifest.json"
ENV, DIR_ENV = "INFERCDN_CORE", "INFERCDN_CORE_DIR"
MODES = ("auto", "python", "compiled")


class CoreError(RuntimeError):
    """INFERCDN_CORE=compiled and the compiled build cannot run, or a build failed."""


@dataclass(frozen=True)
class Core:
    """The build this process runs: ``kind`` is ``compiled`` or ``python``; ``reason`` says why."""

    kind: str
    reason: str
    directory: Path | None = None

    @property
    def compiled(self) -> bool:
        return self.kind == "compiled"


def describe(build: Core | None = None) -> str:
    """One line for an operator: which build this process runs, and why."""
    build = build or current()
    if build.compiled:
        return f"core: compiled ({build.reason}, {build.directory})"
    return f"core: Python ({build.reason})"


def default_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or ROOT / "build" / "core")


def sources(root: Path = ROOT) -> dict[str, Path]:
    """Module name -> source file, for every module the build compiles."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        folder = root.joinpath(*package.split("."))
        for path in sorted(folder.glob("*.py")):
            if path.name != "__init__.py":
                out[f"{package}.{path.stem}"] = path
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ext_suffix() -> str:
    return str(sysconfig.get_config_var("EXT_SUFFIX"))


def stale(directory: Path, root: Path = ROOT) -> str | None:
    """Why the build in ``directory`` cannot serve the sources under ``root`` (None: it can)."""
    return _check(directory, root)[1]


def _check(directory: Path, root: Path) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """The build's manifest when it serves the sources under ``root``; else why not."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        why = _mismatch(manifest, directory, root)
    except FileNotFoundError:
        return None, f"no compiled build in {directory} (infercdn core build)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable manifest in {directory}: {exc!r}"
    return (manifest, None) if why is None else (None, why)


def _mismatch(manifest: Any, directory: Path, root: Path) -> str | None:
    if manifest["ext_suffix"] != _ext_suffix():
        return f"built for {manifest['ext_suffix']}, this Python loads {_ext_suffix()}"
    modules: dict[str, dict[str, str]] = manifest["modules"]
    current = sources(root)
    if set(modules) != set(current):
        changed = sorted(set(modules) ^ set(current))
        return f"modules added or removed since the build: {', '.join(changed[:5])}"
    for name, path in current.items():
        if _sha256(path) != modules[name]["sha256"]:
            return f"{path.relative_to(root)} changed since the build"
        if not (directory / modules[name]["file"]).is_file():
            return f"{modules[name]['file']} missing from {directory}"
    if not (directory / manifest["library"]).is_file():
        return f"{manifest['library']} missing from {directory}"
    return None


class _Finder(importlib.abc.MetaPathFinder):
    """Hands out the compiled extension for each module of the build; every other import goes on."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(file))
        return importlib.util.spec_from_file_location(fullname, file, loader=loader)


_active: Core | None = None


def current() -> Core:
    """The build this process runs (Python until :func:`activate` chose the compiled one)."""
    return _active or Core("python", "not activated")


def activate(mode: str | None = None, directory: Path | None = None) -> Core:
    """Choose the build once per process (later calls return the first choice)."""
    global _active
    if _active is not None:
        return _active
    mode = (mode or os.environ.get(ENV) or "auto").strip().lower()
    if mode not in MODES:
        raise CoreError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode == "python":
        _active = Core("python", f"{ENV}=python")
        return _active
    directory = directory or default_dir()
    manifest, why = _check(directory, ROOT)
    if manifest is not None:
        loaded = sorted(name for name in manifest["modules"] if name in sys.modules)
        if loaded:
            why = f"{', '.join(loaded[:3])} imported before the build was chosen"
    if manifest is None or why is not None:
        if mode == "compiled":
            raise CoreError(f"{ENV}=compiled: {why}")
        _active = Core("python", str(why))
        return _active
    files = {name: directory / entry["file"] for name, entry in manifest["modules"].items()}
    library = manifest["library_module"]
    files[library] = directory / manifest["library"]
    finder = _Finder(files)
    sys.meta_path.insert(0, finder)
    try:  # the library holds every module's code: loaded now, a build that cannot load is found now
        importlib.import_module(library)
    except ImportError as exc:
        sys.meta_path.remove(finder)
        sys.modules.pop(library, None)
        if mode == "compiled":
            raise CoreError(f"{ENV}=compiled: the build in {directory} does not load: {exc}") from None
        _active = Core("python", f"the build in {directory} does not load: {exc}")
        return _active
    _active = Core("compiled", f"mypyc {manifest.get('mypy', '?')}, {len(manifest['modules'])} modules", directory)
    return _active


# The build: mypyc through setuptools' build_ext, run in a child process from the tree's root (so
# mypy reads the project's config) into a fresh folder that replaces the old one when complete.
_SETUP = """
import sys
from setuptools import setup
from mypyc.build import mypycify
out, temp, files = sys.argv[1], sys.argv[2], sys.argv[3:]
setup(name="infercdn-core", ext_modules=mypycify(files, opt_level="3", group_name=%r, target_dir=temp + "/c"),
      script_args=["-q", "build_ext", "--build-lib", out, "--build-temp", temp + "/o", "--parallel", "%d"])
"""


def build(directory: Path | None = None, *, root: Path = ROOT, jobs: int = 0) -> Path:
    """Compile the core into ``directory`` (default :func:`default_dir`) and write its manifest."""
    directory = directory or default_dir()
    try:
        import mypy.version
        import mypyc  # noqa: F401
    except ImportError as exc:
        raise CoreError(f"mypyc is not installed ({exc}): pip install mypy") from None
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(compiler) is None:
        raise CoreError(f"no C compiler ({compiler}) on PATH (the compiled core needs one, e.g. gcc)")
    mods = sources(root)
    directory.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=".core-", dir=directory.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="infercdn-core-") as temp:
            files = [str(path.relative_to(root)) for path in mods.values()]
            cmd = [sys.executable, "-c", _SETUP % (GROUP, jobs or os.cpu_count() or 1), str(fresh), temp, *files]
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
            if done.returncode != 0:
                raise CoreError(f"mypyc build failed (exit {done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
        suffix = _ext_suffix()
        library = next(fresh.glob(f"{GROUP}__mypyc*{suffix}"), None)
        if library is None:
            raise CoreError(f"mypyc build made no {GROUP}__mypyc library in {fresh}")
        modules: dict[str, dict[str, str]] = {}
        for name, path in mods.items():
            file = Path(*name.split(".")).with_suffix(suffix)
            if not (fresh / file).is_file():
                raise CoreError(f"mypyc build made no {file}")
            modules[name] = {"file": str(file), "sha256": _sha256(path)}
        manifest = {"mypy": mypy.version.__version__, "ext_suffix": suffix, "python": sys.version.split()[0],
                    "library": library.name, "library_module": f"{GROUP}__mypyc", "modules": modules}
        (fresh / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if directory.exists():
            shutil.rmtree(directory)
        fresh.rename(directory)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
    return directory
