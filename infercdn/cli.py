"""``infercdn`` command line: the composition root that wires routing, gateway, worker and loadtest.

Each sub-command lives in its own module exposing ``add_arguments(parser)`` and
``main(args) -> int``; this module only registers them (imports are lazy so that
``infercdn --help`` stays fast)."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command path -> (module, help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("up",): ("infercdn.commands.up", "start the gateway and the simulated pools of the embedded default"),
    ("gateway",): ("infercdn.commands.serve", "run the gateway from a config file"),
    ("check",): ("infercdn.commands.check", "validate a config file (exit 1 with file, field path and reason)"),
    ("route",): ("infercdn.commands.route", "print the routing plan for a client IP and model, with its explanation"),
    ("core",): ("infercdn.commands.core", "build the compiled core (mypyc), or say which build runs"),
    ("admin",): ("infercdn.commands.admin", "act on a running gateway: topology, drain/undrain an endpoint or pool, reload"),
    ("worker", "sim"): ("worker.sim.cli", "run a vLLM-compatible simulator"),
    ("worker", "vllm"): ("worker.vllm.cli", "launch and supervise a real vLLM OpenAI server"),
    ("worker", "tiny-model"): ("worker.tiny_model", "build the deterministic tiny test model"),
    ("loadtest",): ("loadtest.cli", "geo-aware load generator against any OpenAI-compatible URL"),
}


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Build the parser; only the module of the command named in ``argv`` is imported
    for its arguments, so `infercdn route` never imports aiohttp's server or vLLM helpers."""
    argv = list(argv)
    parser = argparse.ArgumentParser(prog="infercdn", description="geo-distributed inference CDN")
    top = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction[argparse.ArgumentParser]] = {}
    for path, (module, help_text) in COMMANDS.items():
        if len(path) == 2:
            group = groups.get(path[0])
            if group is None:
                holder = top.add_parser(path[0], help=f"{path[0]} commands")
                group = groups[path[0]] = holder.add_subparsers(dest="subcommand", required=True)
            sub = group.add_parser(path[1], help=help_text, description=help_text)
        else:
            sub = top.add_parser(path[0], help=help_text, description=help_text)
        sub.set_defaults(_module=module)
        if list(path) == argv[: len(path)]:
            importlib.import_module(module).add_arguments(sub)
        else:
            sub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
