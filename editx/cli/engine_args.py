"""What several commands share: the engine flags, the EngineConfig they build, loading an Engine
from them, the data-dir flag and reading a clip given on the command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_engine_args(p: argparse.ArgumentParser) -> None:
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
                   help="flow rows per streamed chunk, first then next (last repeats; 1 row = 40 ms; default 6,24,48; "
                        "upstream: 15,24,48)")
    g.add_argument("--no-stream-prime", action="store_true",
                   help="redo the prompt side of the streaming flow per request, as upstream (default: once per voice)")
    g.add_argument("--exact-flow", action="store_true",
                   help="decode offline clones in upstream's one flow pass over prompt + target (default: against "
                        "the voice's cached flow prime, faster and within the model's own seed-to-seed variation)")
    g.add_argument("--asr-model-dir", type=Path, default=None,
                   help="CTranslate2 Whisper folder for verification and transcripts (default: bundled tiny.en)")
    g.add_argument("--segment-max-chars", type=int, default=None,
                   help="long texts are synthesised in sentence segments of at most this many characters")


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None)


def engine_config(args: argparse.Namespace, **extra):
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


def load_engine(args: argparse.Namespace, **extra):
    from editx.pipeline.engine import Engine

    return Engine.load(engine_config(args, **extra))


def read_audio(path: Path):
    from editx.audio.io import load_audio
    from editx.pipeline.types import PromptAudio

    audio = load_audio(path)
    return PromptAudio(audio.samples, audio.sample_rate)
