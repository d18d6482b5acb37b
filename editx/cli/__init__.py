"""Command-line entry point: `editx <command>` (the `editx` script, `python -m editx`).

One module per group of subcommands: synthesis (clone, edit, edits), stores (voices, cache),
models (download, doctor, warmup, fixtures), serve, scripts (script, session); engine_args holds
the flags they share and entry the parser and the error handling.
"""

from editx.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
