"""`editx voices` and `editx cache`: the voice registry and the prompt cache the server uses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from editx.cli.engine_args import add_data_dir, read_audio


def add_voices(sub) -> None:
    v = sub.add_parser("voices", help="the voice registry")
    add_data_dir(v)
    vs = v.add_subparsers(dest="voices_command", required=True)
    vs.add_parser("list")
    va = vs.add_parser("add")
    va.add_argument("audio", type=Path)
    va.add_argument("--prompt-text", required=True)
    va.add_argument("--name", default="voice")
    vd = vs.add_parser("delete")
    vd.add_argument("voice_id")
    v.set_defaults(func=cmd_voices)


def add_cache(sub) -> None:
    ca = sub.add_parser("cache", help="prompt cache: stats | clear | verify")
    ca.add_argument("cache_command", choices=("stats", "clear", "verify"))
    ca.add_argument("--cache-dir", type=Path, default=None)
    ca.set_defaults(func=cmd_cache)


def cmd_voices(args: argparse.Namespace) -> int:
    from editx.server.settings import ServerSettings
    from editx.server.voices_redis import make_voice_store

    # the same registry the server uses: Redis when EDITX_VOICES_URL/EDITX_REDIS_URL is set, else SQLite
    store = make_voice_store(ServerSettings.from_env(data_dir=args.data_dir))
    if args.voices_command == "add":
        v = store.add(args.name, args.prompt_text, read_audio(args.audio))
        print(v.id)
    elif args.voices_command == "delete":
        store.delete(args.voice_id)
        print(f"deleted {args.voice_id}")
    else:
        for v in store.list():
            print(f"{v.id}  {v.duration_s:6.2f}s  {v.name}: {v.prompt_text}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from editx.cache.tiered import TieredCache, default_cache_dir

    cache = TieredCache(memory_bytes=0, disk_dir=args.cache_dir or default_cache_dir(), disk_bytes=2**62)
    if args.cache_command == "clear":
        cache.clear()
        print("cache cleared")
    elif args.cache_command == "verify":
        print(json.dumps(cache.verify(), indent=2, default=str))
    else:
        print(json.dumps(cache.stats(), indent=2, default=str))
    return 0
