"""``infercdn check F``: validate a config; exit 1 naming file, field path and reason."""
from __future__ import annotations

import argparse
import sys

from gateway.config import ConfigError, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config file to validate")


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    endpoints = sum(len(p.endpoints) + (p.simulate.endpoints if p.simulate else 0) for p in cfg.pools)
    print(f"{args.config}: ok ({len(cfg.regions)} regions, {len(cfg.pools)} pools, {endpoints} endpoints)")
    return 0
