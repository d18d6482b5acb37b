"""`editx clone`, `editx edit` and `editx edits`: one request from the command line, written to a
file whole or streamed as it is produced, and the list of edit types."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from editx.cli.engine_args import add_engine_args, load_engine, read_audio
from editx.errors import EditxError
from editx.verify.cli import add_verify_args, summary_lines, verify_option

log = logging.getLogger("editx.cli")

ASSETS = Path(__file__).parent.parent / "assets"
DEFAULT_PROMPT = ASSETS / "reference_en.wav"


def add_clone(sub) -> None:
    c = sub.add_parser("clone", help="speak TEXT in the voice of a prompt clip")
    add_engine_args(c)
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
    c.set_defaults(func=cmd_clone)


def add_edit(sub) -> None:
    e = sub.add_parser("edit", help="edit a clip: emotion, style, speed, paralinguistic, denoise, vad")
    add_engine_args(e)
    e.add_argument("--audio", type=Path, required=True)
    e.add_argument("--audio-text", default=None, help="transcript of --audio (left out: transcribed by the ASR)")
    e.add_argument("--type", required=True, help="edit type (see `editx edits`)")
    e.add_argument("--info", default=None, help="edit value (see `editx edits`)")
    e.add_argument("--text", default=None, help="new text (paralinguistic edits)")
    e.add_argument("--iterations", type=int, default=1)
    _add_output_args(e)
    e.set_defaults(func=cmd_edit)


def add_edits(sub) -> None:
    sub.add_parser("edits", help="list edit types and their values").set_defaults(func=cmd_edits)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="output file (.wav .flac .mp3 .ogg)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stream", action="store_true", help="write audio as it is produced; prints TTFA")
    p.add_argument("--timeline-json", type=Path, default=None, help="write the stage timeline as JSON")
    add_verify_args(p)


# ---- commands ------------------------------------------------------------------------------------
def cmd_clone(args: argparse.Namespace) -> int:
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
    audio = read_audio(Path(prompt_audio))
    mapped = parse_instructions(args.instructions)
    if mapped:
        log.info("instructions understood as: %s", ", ".join(m.describe() for m in mapped))
    req = CloneRequest(audio, prompt_text, text, seed=args.seed, edit_type=args.edit_type,
                       edit_info=args.edit_info, iterations=args.iterations, speed=args.speed,
                       edits=to_edits(mapped, text))
    return _run_request(args, req)


def cmd_edit(args: argparse.Namespace) -> int:
    from editx.pipeline.types import EditRequest

    if not args.audio.is_file():
        raise EditxError(f"audio {args.audio} does not exist")
    req = EditRequest(read_audio(args.audio), args.audio_text, args.type, args.info, text=args.text,
                      iterations=args.iterations, seed=args.seed)
    return _run_request(args, req)


def cmd_edits(args: argparse.Namespace) -> int:
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


# ---- running one request and writing its audio ---------------------------------------------------
def _run_request(args: argparse.Namespace, req) -> int:
    """Load, run one request (streamed to the file as it is produced with --stream), write it."""
    with load_engine(args) as engine:
        verify = verify_option(args, engine.config)
        if args.stream:
            _stream_to_file(engine, req, args.output, args.timeline_json, verify)
        else:
            write_result(engine.run(req, verify=verify), args.output, args.timeline_json)
    return 0


def write_result(result, out: Path, timeline_json: Path | None) -> None:
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
