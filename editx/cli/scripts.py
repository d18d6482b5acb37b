"""`editx script FILE` and `editx session new|edit|log|undo|export`: the CLI side of scripts and edit
sessions (the same parser, renderer and session store as the server)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from editx.cli.engine_args import add_data_dir, add_engine_args, load_engine, read_audio
from editx.errors import EditxError
from editx.verify.cli import add_verify_args, verify_option


def add_script(sub) -> None:
    s = sub.add_parser("script", help="speak a multi-voice script: '[voice | type:value] text', '[pause 0.8]'")
    add_engine_args(s)
    add_data_dir(s)
    s.add_argument("file", type=Path, help="the script (UTF-8; '-' reads stdin)")
    s.add_argument("-o", "--output", type=Path, required=True, help="output audio (.wav .flac .mp3 .ogg)")
    s.add_argument("--voice", default=None, help="voice of lines before any [voice] tag")
    s.add_argument("--clip", nargs=3, action="append", default=[], metavar=("LABEL", "AUDIO", "TRANSCRIPT"),
                   help="a voice from a clip instead of the registry (repeatable)")
    s.add_argument("--map", action="append", default=[], metavar="LABEL=VOICE_ID", help="label -> registered voice")
    s.add_argument("--seed", type=int, default=None)
    s.add_argument("--gap", type=float, default=0.3, help="seconds of silence between spoken lines")
    s.add_argument("--timestamps", type=Path, default=None, help="write per-line timestamps (JSON)")
    s.add_argument("--captions", type=Path, default=None, help="write captions (.srt or .vtt)")
    s.set_defaults(func=cmd_script)


def add_session(sub) -> None:
    se = sub.add_parser("session", help="edit sessions: new | edit | list | log | undo | export")
    add_data_dir(se)
    ss = se.add_subparsers(dest="session_command", required=True)
    new = ss.add_parser("new", help="start a session from a clip (--audio) or a clone (--voice)")
    add_engine_args(new)
    src = new.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", type=Path, help="the clip to edit")
    src.add_argument("--voice", help="a registered voice id: clone --text in it")
    new.add_argument("--text", required=True, help="what the clip says (or the text to clone)")
    new.add_argument("--name", default=None)
    new.add_argument("--seed", type=int, default=None)
    add_verify_args(new)
    ed = ss.add_parser("edit", help="edit a version (default: the current one); prints the new version")
    add_engine_args(ed)
    ed.add_argument("session")
    ed.add_argument("--version", default=None)
    ed.add_argument("--type", required=True, help="edit type (see `editx edits`)")
    ed.add_argument("--info", default=None)
    ed.add_argument("--text", default=None, help="paralinguistic: the transcript with tags")
    ed.add_argument("--iterations", type=int, default=1)
    ed.add_argument("--seed", type=int, default=None)
    add_verify_args(ed)
    ls = ss.add_parser("list", help="the sessions, newest first, a page at a time")
    ls.add_argument("--limit", type=int, default=20, help="sessions per page (1-100)")
    ls.add_argument("--cursor", default=None, help="where the previous page ended (it prints the next cursor)")
    for name, helptext in (("log", "the version tree"), ("undo", "make the current version's parent current")):
        ss.add_parser(name, help=helptext).add_argument("session")
    ex = ss.add_parser("export", help="write a version's audio (default: the current one)")
    ex.add_argument("session")
    ex.add_argument("--version", default=None)
    ex.add_argument("-o", "--output", type=Path, required=True)
    se.set_defaults(func=cmd_session)


def _settings(args):
    from editx.server.settings import ServerSettings

    return ServerSettings.from_env(data_dir=args.data_dir)


def _read_script(path: Path) -> str:
    try:
        return sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EditxError(f"cannot read the script {path}: {exc}") from None


def cmd_script(args: argparse.Namespace) -> int:
    from editx.audio.io import encode_audio
    from editx.script.captions import CAPTION_FORMATS
    from editx.script.parse import parse_script
    from editx.script.render import ScriptRender, VoiceRef, plan_script
    from editx.server.routes_scripts import instruction_mapper, voice_resolver
    from editx.server.voices_redis import make_voice_store

    fmt = args.captions.suffix.lstrip(".").lower() if args.captions else None
    if fmt is not None and fmt not in CAPTION_FORMATS:
        raise EditxError(f"--captions must end in .srt or .vtt, got {args.captions}")
    items = parse_script(_read_script(args.file), instruction_mapper=instruction_mapper())  # errors before loading
    mapping = dict(m.split("=", 1) for m in args.map if "=" in m)
    clips = {label: (Path(path), text) for label, path, text in args.clip}
    registry = None

    def resolve(label: str) -> VoiceRef:
        nonlocal registry
        if label in clips:
            path, text = clips[label]
            if not path.is_file():
                raise EditxError(f"--clip {label}: {path} does not exist")
            return VoiceRef(label, None, read_audio(path), text)
        registry = registry or make_voice_store(_settings(args))
        return voice_resolver(registry, mapping)(label)

    with load_engine(args) as engine:
        plan = plan_script(items, engine, resolve, default_voice=args.voice, seed=args.seed, gap_s=args.gap)
        t0, parts, segments = time.perf_counter(), [], []
        for samples, seg in ScriptRender(engine, plan):
            if not parts:
                print(f"first line after {time.perf_counter() - t0:.3f} s", flush=True)
            parts.append(samples)
            segments.append(seg)
    import numpy as np

    audio = np.concatenate(parts)
    args.output.write_bytes(encode_audio(audio, plan.sample_rate, args.output.suffix.lstrip(".").lower() or "wav"))
    print(f"wrote {args.output} ({audio.size / plan.sample_rate:.2f} s, {len(plan.lines)} lines, seed {plan.seed}, "
          f"total {time.perf_counter() - t0:.2f} s)")
    if args.timestamps:
        args.timestamps.write_text(json.dumps({"seed": plan.seed, "segments": segments}, indent=2))
    if args.captions:
        args.captions.write_text(CAPTION_FORMATS[fmt](segments), encoding="utf-8")
    return 0


def cmd_session(args: argparse.Namespace) -> int:
    from editx.server.voices_redis import make_voice_store
    from editx.sessions import service
    from editx.sessions.store import make_session_store

    settings = _settings(args)
    voices = make_voice_store(settings)
    store = make_session_store(settings, redis_url=getattr(voices, "url", None))
    command = args.session_command
    if command == "new":
        root = _new_root(args, voices)
        session, version = store.create(args.name or "", root)
        print(f"{session.id} {version.id}")
    elif command == "edit":
        spec = service.EditSpec(args.type, args.info, args.text, args.iterations, args.seed)
        req, parent = service.edit_request(store, args.session, args.version, spec)
        with load_engine(args) as engine:
            result = engine.run(req, verify=verify_option(args, engine.config))
        v = service.record_edit(store, args.session, parent, req, result)
        print(f"{v.id} (parent {v.parent}, seed {v.seed}, {v.duration_s:.2f} s)" + _scores_note(v.scores))
    elif command == "list":
        page = service.list_page(store, args.limit, args.cursor)
        for d in page["data"]:
            print(f"{d['id']}  {d['version_count']:3d} versions  current {d['current']}  {d['name']}")
        if page["next_cursor"]:
            print(f"more: --cursor {page['next_cursor']}")
    elif command == "log":
        _print_tree(service.describe(store, args.session))
    elif command == "undo":
        print(f"current: {service.undo(store, args.session).current}")
    else:
        from editx.audio.io import encode_audio

        vid = args.version or store.get(args.session).current
        audio = store.audio(args.session, vid)
        args.output.write_bytes(encode_audio(audio.samples, audio.sample_rate,
                                             args.output.suffix.lstrip(".").lower() or "wav"))
        print(f"wrote {args.output} ({vid}, {audio.duration_s:.2f} s)")
    return 0


def _new_root(args, voices):
    from editx.pipeline.types import CloneRequest, PromptAudio
    from editx.sessions import service

    if args.audio is not None:
        if not args.audio.is_file():
            raise EditxError(f"audio {args.audio} does not exist")
        return service.root_version("upload", args.text.strip(), read_audio(args.audio))
    voice = voices.get(args.voice)
    seed = args.seed if args.seed is not None else service.fresh_seed()
    req = CloneRequest(voices.audio(voice.id), voice.prompt_text, args.text, seed=seed, voice_id=voice.id)
    with load_engine(args) as engine:
        result = engine.run(req, verify=verify_option(args, engine.config))
    seed, scores = service.outcome(req, result)
    return service.root_version("clone", req.text, PromptAudio(result.audio, result.sample_rate), seed=seed,
                                timeline=result.timeline, voice_id=voice.id, scores=scores)


def _print_tree(tree: dict) -> None:
    versions = {v["id"]: v for v in tree["versions"]}
    print(f"session {tree['id']} ({tree['name']}), {len(versions)} versions")

    def show(vid: str, depth: int) -> None:
        v = versions[vid]
        edit = v["edit"] or {}
        what = v["op"] if v["op"] != "edit" else f"edit {edit.get('type')}" + (f":{edit['info']}" if edit.get("info") else "")
        mark = "*" if vid == tree["current"] else " "
        print(f"{mark} {'  ' * depth}{vid}  {what}  seed={v['seed']}  {v['duration_s']:.2f}s  \"{v['text'][:40]}\""
              + _scores_note(v["scores"]))
        for child in v["children"]:
            show(child, depth + 1)

    for v in tree["versions"]:
        if v["parent"] is None:
            show(v["id"], 0)


def _scores_note(scores: dict | None) -> str:
    """'  [verified wer=0.000 sim=0.871]' for a version made by a verified request, else ''."""
    if not scores:
        return ""
    sim = "off" if scores.get("speaker_sim") is None else f"{scores['speaker_sim']:.3f}"
    state = "verified" if scores.get("verified") else "NOT verified"
    return f"  [{state} {scores.get('metric', 'wer')}={scores.get('error_rate', 1.0):.3f} sim={sim}]"
