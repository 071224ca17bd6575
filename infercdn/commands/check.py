"""``infercdn check F``: validate a config; exit 1 naming file, field path and reason."""
from __future__ import annotations

import argparse

from infercdn.commands import load_or_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file to validate")


def main(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return 1
    endpoints = sum(len(p.endpoints) + (p.simulate.endpoints if p.simulate else 0) for p in cfg.pools)
    print(f"{args.config}: ok ({len(cfg.regions)} regions, {len(cfg.pools)} pools, {endpoints} endpoints)")
    return 0
