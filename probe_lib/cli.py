"""Shared command-line pieces: the preset and ``--set KEY=VALUE`` config overrides."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_config_args(parser: argparse.ArgumentParser, preset: bool = True) -> None:
    """Add ``--preset`` (optional) and repeatable ``--set KEY=VALUE`` to ``parser``."""
    from probe_lib.config import presets

    if preset:
        parser.add_argument("--preset", default="small", choices=presets(),
                            help="configuration preset (default: small)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        dest="overrides",
                        help="config override, repeatable: field or section__field, value as "
                             "JSON when it parses (e.g. --set upsampler__train_steps=200)")


def parse_overrides(parser: argparse.ArgumentParser, items: list[str]) -> dict[str, Any]:
    """``["a=1", "b__c=x"]`` -> ``{"a": 1, "b__c": "x"}``; a malformed item is a usage error."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text  # a bare word such as loftup
    return out
