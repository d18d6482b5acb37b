"""Command-line entry point: `editx <command>`; configures logging and turns errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from editx.errors import EditxError

log = logging.getLogger("editx.cli")


def _cmd_fixtures(args: argparse.Namespace) -> int:
    from editx import fixtures

    root = fixtures.make(args.dir, preset=args.preset, seed=args.seed)
    print(f"wrote {args.preset} fixtures to {root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="editx", description="Serve and run Step-Audio-EditX.")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    fx = sub.add_parser("fixtures", help="write random-weight checkpoints in the official layouts")
    fx_sub = fx.add_subparsers(dest="fixtures_command", required=True)
    mk = fx_sub.add_parser("make", help="write DIR/Step-Audio-Tokenizer and DIR/Step-Audio-EditX")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_cmd_fixtures)
    return p


def _configure_logging(fmt: str, verbose: bool) -> None:
    from editx.telemetry.log import configure_logging

    configure_logging(fmt=fmt, level=logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.log_format, args.verbose)
    try:
        return args.func(args)
    except EditxError as exc:
        print(f"editx: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
