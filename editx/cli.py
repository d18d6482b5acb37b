"""Command-line entry point: `editx <command>`; configures logging and turns errors into one line."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

from editx.errors import EditxError
from editx.verify.cli import add_verify_args, summary_lines, verify_option

log = logging.getLogger("editx.cli")

ASSETS = Path(__file__).parent / "assets"
DEFAULT_PROMPT = ASSETS / "reference_en.wav"


# ---- engine options shared by clone/edit/serve/warmup/bench ---------------------------------------
def _add_engine_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--model-dir", type=Path, default=None,
                   help="folder holding Step-Audio-Tokenizer/ and Step-Audio-EditX/ (env EDITX_MODEL_DIR); "
                        "without it the offline 'lite' backend runs")
    g.add_argument("--backend", choices=("auto", "editx", "lite"), default=None)
    g.add_argument("--device", default=None, help="auto|cpu|cuda|cuda:N")
    g.add_argument("--dtype", default=None, choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--quantize", default=None, choices=("int8", "bnb8", "bnb4", "awq"))
    g.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    g.add_argument("--onnx-threads", type=int, default=None)
    g.add_argument("--flow-steps", type=int, default=None)
    g.add_argument("--cache-dir", type=Path, default=None, help="prompt cache dir (env EDITX_CACHE_DIR)")
    g.add_argument("--no-cache", action="store_true", help="disable the prompt cache")
    g.add_argument("--redis-url", default=None, help="shared cache tier (env EDITX_REDIS_URL)")
    g.add_argument("--no-warmup", action="store_true")
    g.add_argument("--stream-chunk-rows", type=_int_list, default=None, metavar="N,N,...",
                   help="flow rows per streamed chunk, first then next (last repeats; 1 row = 40 ms; default 15,24,48)")
    g.add_argument("--no-stream-prime", action="store_true",
                   help="redo the prompt side of the streaming flow per request, as upstream (default: once per voice)")
    g.add_argument("--exact-flow", action="store_true",
                   help="decode offline clones in upstream's one flow pass over prompt + target (default: against "
                        "the voice's cached flow prime, faster and within the model's own seed-to-seed variation)")
    g.add_argument("--asr-model-dir", type=Path, default=None,
                   help="CTranslate2 Whisper folder for verification and transcripts (default: bundled tiny.en)")
    g.add_argument("--segment-max-chars", type=int, default=None,
                   help="long texts are synthesised in sentence segments of at most this many characters")


def _engine_config(args: argparse.Namespace, **extra):
    from editx.config import EngineConfig

    return EngineConfig.from_env(
        model_dir=args.model_dir, backend=args.backend, device=args.device, dtype=args.dtype,
        quantize=args.quantize, threads=args.threads, onnx_threads=args.onnx_threads,
        flow_steps=args.flow_steps, cache_dir=args.cache_dir, redis_url=args.redis_url,
        cache_enabled=False if args.no_cache else None, warmup=False if args.no_warmup else None,
        stream_chunk_rows=args.stream_chunk_rows, stream_prime=False if args.no_stream_prime else None,
        offline_prime=False if args.exact_flow else None,
        segment_max_chars=args.segment_max_chars, asr_model_dir=args.asr_model_dir, **extra)


def _int_list(text: str) -> tuple[int, ...]:
    from editx.config import parse_int_list

    try:
        return parse_int_list(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _load_engine(args: argparse.Namespace, **extra):
    from editx.pipeline.engine import Engine

    return Engine.load(_engine_config(args, **extra))


def _read_audio(path: Path):
    from editx.audio.io import load_audio
    from editx.pipeline.types import PromptAudio

    audio = load_audio(path)
    return PromptAudio(audio.samples, audio.sample_rate)


def _write_result(result, out: Path, timeline_json: Path | None) -> None:
    from editx.audio.io import encode_audio
    from editx.telemetry.timing import TimelineSnapshot

    fmt = out.suffix.lstrip(".").lower() or "wav"
    out.write_bytes(encode_audio(result.audio, result.sample_rate, fmt))
    print(TimelineSnapshot.from_dict(result.timeline).format_table())
    print(f"wrote {out} ({result.duration_s:.2f} s, backend {result.backend})")
    for line in summary_lines(result):
        print(line)
    if timeline_json:
        timeline_json.write_text(json.dumps(result.timeline, indent=2))


def _stream_to_file(engine, request, out: Path, timeline_json: Path | None = None, verify=None) -> None:
    import time

    import numpy as np

    from editx.audio.io import wav_header

    t0, first, n = time.perf_counter(), None, 0
    with open(out, "wb") as fh, engine.stream(request, verify=verify) as chunks:  # an interrupt cancels the request
        fh.write(wav_header(engine.backend.sample_rate))
        for chunk in chunks:
            if first is None:
                first = time.perf_counter() - t0
                print(f"first audio after {first:.3f} s", flush=True)
            fh.write((np.clip(chunk.samples, -1, 1) * 32767).astype("<i2").tobytes())
            n += chunk.samples.size
    _fix_wav_sizes(out)
    print(f"wrote {out} ({n / engine.backend.sample_rate:.2f} s streamed, total {time.perf_counter() - t0:.2f} s)")
    for line in summary_lines(chunks.result):
        print(line)
    if timeline_json:
        timeline_json.write_text(json.dumps(chunks.result.timeline, indent=2))


def _fix_wav_sizes(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.seek(4)
        fh.write((size - 8).to_bytes(4, "little"))
        fh.seek(40)
        fh.write((size - 44).to_bytes(4, "little"))


def _run_request(args: argparse.Namespace, req) -> int:
    """Load, run one request (streamed to the file as it is produced with --stream), write it."""
    with _load_engine(args) as engine:
        verify = verify_option(args, engine.config)
        if args.stream:
            _stream_to_file(engine, req, args.output, args.timeline_json, verify)
        else:
            _write_result(engine.run(req, verify=verify), args.output, args.timeline_json)
    return 0


# ---- commands ------------------------------------------------------------------------------------
def _cmd_clone(args: argparse.Namespace) -> int:
    from editx.pipeline.instructions import parse_instructions, to_edits
    from editx.pipeline.types import CloneRequest

    prompt_audio = args.prompt_audio or DEFAULT_PROMPT
    prompt_text = args.prompt_text
    if args.voice is not None:
        if args.prompt_audio is not None:
            raise EditxError("give --voice or --prompt-audio, not both")
        from editx.server.builtin_voices import BuiltinVoices

        builtins = BuiltinVoices()
        name = builtins.find(args.voice)
        if name is None:
            raise EditxError(f"unknown built-in voice {args.voice!r}; built-in voices: {', '.join(builtins.names)}")
        prompt_audio, prompt_text = builtins.root / builtins.voice_file(name), builtins.voice(name).prompt_text
    if prompt_text is None and args.prompt_audio is None:  # (a clip without one is transcribed by the ASR)
        prompt_text = DEFAULT_PROMPT.with_suffix(".txt").read_text().strip()
    if not Path(prompt_audio).is_file():
        raise EditxError(f"prompt audio {prompt_audio} does not exist")
    text = args.text
    if args.text_file is not None:
        try:
            text = args.text_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise EditxError(f"cannot read --text-file {args.text_file}: {exc}") from None
    audio = _read_audio(Path(prompt_audio))
    mapped = parse_instructions(args.instructions)
    if mapped:
        log.info("instructions understood as: %s", ", ".join(m.describe() for m in mapped))
    req = CloneRequest(audio, prompt_text, text, seed=args.seed, edit_type=args.edit_type,
                       edit_info=args.edit_info, iterations=args.iterations, speed=args.speed,
                       edits=to_edits(mapped, text))
    return _run_request(args, req)


def _cmd_edit(args: argparse.Namespace) -> int:
    from editx.pipeline.types import EditRequest

    if not args.audio.is_file():
        raise EditxError(f"audio {args.audio} does not exist")
    req = EditRequest(_read_audio(args.audio), args.audio_text, args.type, args.info, text=args.text,
                      iterations=args.iterations, seed=args.seed)
    return _run_request(args, req)


def _cmd_edits(args: argparse.Namespace) -> int:
    from editx.lm.prompts import EDIT_OPTIONS, LANGUAGE_TAGS, PARALINGUISTIC_TAGS

    for edit_type, values in EDIT_OPTIONS.items():
        if edit_type == "paralinguistic":
            print(f"{edit_type}: (no value; put tags in --text) {' '.join(PARALINGUISTIC_TAGS)}")
        else:
            print(f"{edit_type}: {', '.join(values) if values else '(no value)'}")
    print(f"language tags (prefix the text to speak): {' '.join(LANGUAGE_TAGS)}")
    from editx.pipeline.instructions import phrasebook

    book = phrasebook()
    print("\ninstructions in plain words (clone --instructions, speech `instructions`), e.g.: "
          + "; ".join(book["examples"]))
    for edit_type, values in book["phrasings"].items():
        for value, words in values.items():
            print(f"  {edit_type} {value}: {', '.join(words)}")
    print("  intensity: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in book["intensity"].items()))
    return 0


def _cmd_voices(args: argparse.Namespace) -> int:
    from editx.server.settings import ServerSettings
    from editx.server.voices_redis import make_voice_store

    # the same registry the server uses: Redis when EDITX_VOICES_URL/EDITX_REDIS_URL is set, else SQLite
    store = make_voice_store(ServerSettings.from_env(data_dir=args.data_dir))
    if args.voices_command == "add":
        v = store.add(args.name, args.prompt_text, _read_audio(args.audio))
        print(v.id)
    elif args.voices_command == "delete":
        store.delete(args.voice_id)
        print(f"deleted {args.voice_id}")
    else:
        for v in store.list():
            print(f"{v.id}  {v.duration_s:6.2f}s  {v.name}: {v.prompt_text}")
    return 0


def _cmd_warmup(args: argparse.Namespace) -> int:
    import time

    t0 = time.perf_counter()
    engine = _load_engine(args)
    load_s = time.perf_counter() - t0
    cost = engine.warmup() if not args.no_warmup else {}
    print(json.dumps({"load_s": round(load_s, 3), **cost}, indent=2, default=str))
    engine.close()
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
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


def _cmd_serve(args: argparse.Namespace) -> int:
    from editx.server.run import serve

    config = _engine_config(args)
    if config.resolved_backend == "editx" and config.model_dir is not None:
        from editx.doctor import check  # refuse to start on a folder that will not load, with doctor's lines

        report = check(config.model_dir)
        if not report.ok:
            print("\n".join(report.lines()), file=sys.stderr)
            return 1
    return serve(args, config)


def _print_report(report) -> int:
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


def _cmd_doctor(args: argparse.Namespace) -> int:
    from editx.config import EngineConfig
    from editx.doctor import check

    root = args.dir or EngineConfig.from_env().model_dir
    if root is None:
        raise EditxError("give the model folder (editx doctor DIR) or set EDITX_MODEL_DIR")
    return _print_report(check(root))


def _cmd_download(args: argparse.Namespace) -> int:
    from editx.doctor import check
    from editx.hub import EDITX_DIRNAME, TOKENIZER_DIRNAME, download

    revisions = {EDITX_DIRNAME: args.editx_revision, TOKENIZER_DIRNAME: args.tokenizer_revision}
    root = download(args.dir, source=args.source, revisions=revisions)
    print(f"downloaded into {root}; checking it:")
    return _print_report(check(root))


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

    c = sub.add_parser("clone", help="speak TEXT in the voice of a prompt clip")
    _add_engine_args(c)
    c.add_argument("--prompt-audio", type=Path, default=None, help="reference clip (default: the bundled one)")
    c.add_argument("--prompt-text", default=None,
                   help="transcript of the reference clip (left out: transcribed by the ASR, editx[quality])")
    c.add_argument("--voice", default=None, help="a built-in voice (alloy, ash, …) instead of --prompt-audio")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="text to speak (any length: long texts go in sentence segments)")
    src.add_argument("--text-file", type=Path, help="read the text to speak from this UTF-8 file")
    c.add_argument("--edit-type", default=None, help="also apply this edit to the result")
    c.add_argument("--edit-info", default=None)
    c.add_argument("--iterations", type=int, default=1)
    c.add_argument("--speed", type=float, default=1.0, help="0.25–4.0 (OpenAI's range)")
    c.add_argument("--instructions", default=None,
                   help="edits in plain words, e.g. 'very sad, then a bit faster' or '用悲伤的语气' (see `editx edits`)")
    _add_output_args(c)
    c.set_defaults(func=_cmd_clone)

    e = sub.add_parser("edit", help="edit a clip: emotion, style, speed, paralinguistic, denoise, vad")
    _add_engine_args(e)
    e.add_argument("--audio", type=Path, required=True)
    e.add_argument("--audio-text", default=None, help="transcript of --audio (left out: transcribed by the ASR)")
    e.add_argument("--type", required=True, help="edit type (see `editx edits`)")
    e.add_argument("--info", default=None, help="edit value (see `editx edits`)")
    e.add_argument("--text", default=None, help="new text (paralinguistic edits)")
    e.add_argument("--iterations", type=int, default=1)
    _add_output_args(e)
    e.set_defaults(func=_cmd_edit)

    sub.add_parser("edits", help="list edit types and their values").set_defaults(func=_cmd_edits)

    v = sub.add_parser("voices", help="the voice registry")
    v.add_argument("--data-dir", type=Path, default=None)
    vs = v.add_subparsers(dest="voices_command", required=True)
    vs.add_parser("list")
    va = vs.add_parser("add")
    va.add_argument("audio", type=Path)
    va.add_argument("--prompt-text", required=True)
    va.add_argument("--name", default="voice")
    vd = vs.add_parser("delete")
    vd.add_argument("voice_id")
    v.set_defaults(func=_cmd_voices)

    w = sub.add_parser("warmup", help="load, warm up and report what it cost")
    _add_engine_args(w)
    w.set_defaults(func=_cmd_warmup)

    ca = sub.add_parser("cache", help="prompt cache: stats | clear | verify")
    ca.add_argument("cache_command", choices=("stats", "clear", "verify"))
    ca.add_argument("--cache-dir", type=Path, default=None)
    ca.set_defaults(func=_cmd_cache)

    s = sub.add_parser("serve", help="HTTP API + web UI")
    _add_engine_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--data-dir", type=Path, default=None)
    rs = s.add_argument_group("cluster (Ray Serve; needs the cluster extra; without these one process serves)")
    rs.add_argument("--replicas", type=int, default=None, help="engine replicas, each with its own model")
    rs.add_argument("--ray-address", default=None, help="join this Ray cluster (env RAY_ADDRESS); default: local")
    rs.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of a local Ray instance (default: all)")
    rs.add_argument("--min-replicas", type=int, default=None, help="autoscaling lower bound (with --max-replicas)")
    rs.add_argument("--max-replicas", type=int, default=None, help="autoscaling upper bound (turns autoscaling on)")
    rs.add_argument("--target-ongoing-requests", type=float, default=None, help="autoscaling target per replica")
    rs.add_argument("--replica-cpus", type=float, default=None, help="CPUs reserved per replica (default 1)")
    rs.add_argument("--replica-gpus", type=float, default=None, help="GPU share per replica (default 0)")
    rs.add_argument("--max-ongoing-requests", type=int, default=None, help="requests one replica runs at once")
    rs.add_argument("--max-queued-requests", type=int, default=None,
                    help="requests waiting for a replica before the server answers 429")
    s.set_defaults(func=_cmd_serve)

    if importlib.util.find_spec("editx.bench") is not None:
        from editx import bench  # light at import: heavy modules load inside bench.run

        b = sub.add_parser("bench", help="benchmark: stages, cold/warm, A/B, scaling sweeps, quality")
        bench.add_arguments(b)
        b.set_defaults(func=bench.run)

    d = sub.add_parser("download", help="download the official weights at pinned revisions, then check them")
    d.add_argument("dir", type=Path)
    d.add_argument("--source", choices=("huggingface", "modelscope"), default="huggingface")
    d.add_argument("--editx-revision", default=None, help="Step-Audio-EditX commit (default: the pinned one)")
    d.add_argument("--tokenizer-revision", default=None, help="Step-Audio-Tokenizer commit (default: pinned)")
    d.set_defaults(func=_cmd_download)

    dr = sub.add_parser("doctor", help="check a model folder from its headers (seconds); exit 1 if it will not load")
    dr.add_argument("dir", type=Path, nargs="?", default=None, help="default: EDITX_MODEL_DIR")
    dr.set_defaults(func=_cmd_doctor)

    from editx.cli_scripts import add_commands

    add_commands(sub, _add_engine_args, lambda q: q.add_argument("--data-dir", type=Path, default=None))

    fx = sub.add_parser("fixtures", help="write random-weight checkpoints in the official layouts")
    fx_sub = fx.add_subparsers(dest="fixtures_command", required=True)
    mk = fx_sub.add_parser("make", help="write DIR/Step-Audio-Tokenizer and DIR/Step-Audio-EditX")
    mk.add_argument("dir", type=Path)
    mk.add_argument("--preset", choices=("tiny", "small"), default="tiny")
    mk.add_argument("--seed", type=int, default=0)
    mk.set_defaults(func=_cmd_fixtures)
    return p


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (.wav .flac .mp3 .ogg)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="write audio as it is produced; prints TTFA")
    p.add_argument("--timeline-json", type=Path, default=None, help="write the stage timeline as JSON")
    add_verify_args(p)


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


if __name__ == "__main__":
    raise SystemExit(main())
