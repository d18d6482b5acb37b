"""The model folder from the command line: `editx download`, `editx doctor`, `editx warmup` and
`editx fixtures make` (random-weight checkpoints in the official layouts)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editx.cli.engine_args import add_engine_args, load_engine
from editx.errors import EditxError


def add_warmup(sub) -> None:
    w = sub.add_parser("warmup", help="load, warm up and report what it cost")
    add_engine_args(w)
    w.set_defaults(func=cmd_warmup)


def add_download(sub) -> None:
    d = sub.add_parser("download", help="download the official weights at pinned revisions, then check them")
    d.add_argument("dir", type=Path)
    d.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface")
    d.add_argument("--editx-revision", default=None, help="Step-Audio-EditX commit (default: the pinned one)")
    d.add_argument("--tokenizer-revision", default=None, help="Step-Audio-Tokenizer commit (default: pinned)")
    d.set_defaults(func=cmd_download)


def add_doctor(sub) -> None:
    dr = sub.add_parser("doctor", help="check a model folder from its headers (seconds); exit 1 if it will not load")
    dr.add_argument("dir", type=Path, nargs="?", default=None, help="default: EDITX_MODEL_DIR")
    dr.set_defaults(func=cmd_doctor)


def add_fixtures(sub) -> None:
    fx = sub.add_parser("fixtures", help="write random-weight checkpoints in the official layouts")
    fx_sub = fx.add_subparsers(dest="fixtures_command", required=True)
    mk = fx_sub.add_parser("make", help="write DIR/Step-Audio-Tokenizer and DIR/Step-Audio-EditX")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=cmd_fixtures)


def cmd_warmup(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    engine = load_engine(args)
    load_s = time.perf_counter() - t0
    cost = engine.warmup() if not args.no_warmup else {}
    print(json.dumps({"load_s": round(load_s, 3), **cost}, indent=2, default=str))
    engine.close()
    return 0


def print_report(report) -> int:
    """doctor's lines; the exit status says whether the folder will load."""
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def cmd_doctor(args: argparse.Namespace) -> int:
    from editx.config import EngineConfig
    from editx.doctor import check

    root = args.dir or EngineConfig.from_env().model_dir
    if root is None:
        raise EditxError("give the model folder (editx doctor DIR) or set EDITX_MODEL_DIR")
    return print_report(check(root))


def cmd_download(args: argparse.Namespace) -> int:
    from editx.doctor import check
    from editx.hub import EDITX_DIRNAME, TOKENIZER_DIRNAME, download

    revisions = {EDITX_DIRNAME: args.editx_revision, TOKENIZER_DIRNAME: args.tokenizer_revision}
    root = download(args.dir, source=args.source, revisions=revisions)
    print(f"downloaded into {root}; checking it:")
    return print_report(check(root))


def cmd_fixtures(args: argparse.Namespace) -> int:
    from editx import fixtures

    root = fixtures.make(args.dir, preset=args.preset, seed=args.seed)
    print(f"wrote {args.preset} fixtures to {root}")
    return 0
