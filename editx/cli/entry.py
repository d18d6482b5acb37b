"""The `editx` parser (every subcommand, in the order `editx --help` lists them) and `main`, which
configures logging and turns errors into one line."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys

from editx.cli import models, scripts, serve, stores, synthesis
from editx.errors import EditxError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="editx", description="Serve and run Step-Audio-EditX.")
    p.add_argument("--log-format", choices=("console", "json"), default="console")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    synthesis.add_clone(sub)
    synthesis.add_edit(sub)
    synthesis.add_edits(sub)
    stores.add_voices(sub)
    models.add_warmup(sub)
    stores.add_cache(sub)
    serve.add_serve(sub)
    if importlib.util.find_spec("editx.bench") is not None:
        from editx import bench  # light at import: heavy modules load inside bench.run

        b = sub.add_parser("bench", help="benchmark: stages, cold/warm, A/B, scaling sweeps, quality")
        bench.add_arguments(b)
        b.set_defaults(func=bench.run)
    models.add_download(sub)
    models.add_doctor(sub)
    scripts.add_script(sub)
    scripts.add_session(sub)
    models.add_fixtures(sub)
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
    except OSError as exc:  # unreadable/unwritable paths given on the command line
        print(f"editx: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("editx: interrupted", file=sys.stderr)
        return 130
