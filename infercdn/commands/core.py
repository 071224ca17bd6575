"""``infercdn core build|status|clean``: the compiled build of the core (``infercdn/core.py``)."""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from infercdn import core


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("build", "status", "clean"),
                        help="build: compile routing/ and gateway/forward/ with mypyc (kept when fresh); "
                             "status: which build a process started now would run, and why (exit 1: Python); "
                             "clean: remove the build")
    parser.add_argument("--dir", type=Path, default=None, help="where the build lives (default build/core, or $INFERCDN_CORE_DIR)")
    parser.add_argument("--if-possible", action="store_true",
                        help="build: where it cannot be built, say why and exit 0 (the core then runs as Python)")


def main(args: argparse.Namespace) -> int:
    directory = args.dir or core.default_dir()
    if args.action == "clean":
        shutil.rmtree(directory, ignore_errors=True)
        print(f"removed {directory}")
        return 0
    why = core.stale(directory)
    if args.action == "status":
        print(f"{directory}: " + ("fresh, processes run the compiled core" if why is None
                                  else f"not used ({why}): processes run the core as Python"))
        return 0 if why is None else 1
    if why is None:
        print(f"compiled core in {directory} is up to date")
        return 0
    try:
        core.build(directory)
    except core.CoreError as exc:
        print(f"compiled core not built: {exc}", file=sys.stderr)
        if args.if_possible:
            print("the core runs as Python (slower, the same behaviour)", file=sys.stderr)
            return 0
        return 1
    print(f"compiled core built in {directory}")
    return 0
