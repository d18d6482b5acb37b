"""Engine configuration: frozen dataclasses, environment overrides, and the one device/dtype decision."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from editx.errors import ValidationError

# Upstream Step-Audio-EditX generation defaults (tts.py: do_sample=True, temperature=0.7, max_length=8192).
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_LENGTH = 8192
# RepetitionAwareLogitsProcessor in upstream tts.py: window 10, threshold 0.1.
DEFAULT_REPETITION_WINDOW = 10
DEFAULT_REPETITION_THRESHOLD = 0.1
# Upstream pins transformers 4.53.3, whose GenerationConfig default top_k=50 applies silently to
# `generate(do_sample=True, temperature=0.7)` (confirmed token for token by the LM goldens).
DEFAULT_TOP_K = 50

BACKENDS = ("auto", "editx", "lite")
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = (None, "int8", "bnb8", "bnb4", "awq")
LM_LOOPS = ("session", "naive")  # naive: the way upstream's HF generate runs (benchmark baseline only)
# Streaming: upstream's growing flow chunks (CosyVoice_stream_impl_ chunk_size_list), in 25 Hz flow rows
# (40 ms each; 3 rows = one group of 5 LM tokens). The first audio needs first + 3 lookahead rows.
STREAM_CHUNK_ROWS = (15, 24, 48)
STREAM_NOISE = ("offline", "upstream")  # start noise per chunk: offline frame positions, or upstream's offset


@dataclass(frozen=True)
class SamplingConfig:
    """LM sampling; defaults follow upstream (temperature 0.7, top-k 50). `temperature=0` means greedy."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = 1.0
    top_k: int = DEFAULT_TOP_K  # 0 disables it
    max_length: int = DEFAULT_MAX_LENGTH  # prompt + generated, as upstream's generate(max_length=8192)
    max_new_tokens: int | None = None  # optional extra cap on generated tokens (tests, warm-up)
    # optional runaway guard for clones: at most this many audio tokens per character of the text
    # (real speech is about 3 per English character; random fixture weights use it in place of EOS)
    max_tokens_per_char: float | None = None
    repetition_window: int = DEFAULT_REPETITION_WINDOW
    repetition_threshold: float = DEFAULT_REPETITION_THRESHOLD

    def __post_init__(self) -> None:
        if not (self.temperature >= 0.0):
            raise ValidationError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValidationError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValidationError(f"top_k must be >= 0 (0 disables it), got {self.top_k}")
        if self.max_length < 2:
            raise ValidationError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValidationError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_tokens_per_char is not None and not (self.max_tokens_per_char > 0):
            raise ValidationError(f"max_tokens_per_char must be > 0, got {self.max_tokens_per_char}")

    def for_text(self, text: str) -> SamplingConfig:
        """These settings for a clone of `text`: max_tokens_per_char folded into max_new_tokens."""
        if self.max_tokens_per_char is None:
            return self
        cap = max(1, math.ceil(self.max_tokens_per_char * len(text)))
        if self.max_new_tokens is not None and self.max_new_tokens <= cap:
            return self
        return replace(self, max_new_tokens=cap)


@dataclass(frozen=True)
class EngineConfig:
    """Everything the Engine needs to load and serve; built once at the edge (CLI, server, tests)."""

    model_dir: Path | None = None  # holds Step-Audio-Tokenizer/ and Step-Audio-EditX/ (upstream layout)
    backend: str = "auto"  # auto: editx when model_dir is set, lite otherwise
    device: str = "auto"  # auto|cpu|cuda|cuda:N
    dtype: str = "auto"  # auto: bfloat16 on CUDA, float32 on CPU
    quantize: str | None = None
    threads: int | None = None  # torch intra-op threads; None = leave torch's default
    onnx_threads: int = 1
    onnx_providers: tuple[str, ...] | None = None  # None: CUDA when available, then CPU
    allow_tf32: bool = True
    flow_steps: int = 10
    lm_loop: str = "session"
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cache_dir: Path | None = None  # None: platform user cache dir / editx
    cache_memory_bytes: int = 2 * 2**30  # encodings, LM prefix KV and streaming primes (~1.3 MB per prompt mel frame)
    cache_disk_bytes: int = 4 * 2**30
    cache_enabled: bool = True
    redis_url: str | None = None
    max_audio_seconds: float = 600.0
    queue_size: int = 64
    max_batch: int = 8
    warmup: bool = True
    stream_chunk_rows: tuple[int, ...] = STREAM_CHUNK_ROWS  # per streamed chunk: first, second, ... (last repeats)
    stream_noise: str = "offline"
    stream_prime: bool = True  # prompt side of the streaming flow made once per voice (False: per request)
    # opt-in: offline rounds decode against that per-voice prime too (far less flow work for short
    # outputs; close to, not equal to, upstream's one-pass output, which stays the default)
    offline_prime: bool = False
    segment_max_chars: int | None = None  # long texts go in segments of this size (None: 250, CJK-heavy 100)
    segment_pause_s: float = 0.25  # silence between synthesised text segments
    edit_window_s: float = 25.0  # longer clips are edited in parts cut at silences
    # lite voice matching: timbre-search probes and seconds per new voice (0 probes: blend only)
    lite_search_probes: int = 48
    lite_search_budget_s: float = 25.0

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValidationError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.dtype not in DTYPES:
            raise ValidationError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantize not in QUANTIZATIONS:
            allowed = ", ".join(str(q) for q in QUANTIZATIONS)
            raise ValidationError(f"quantize must be one of {allowed}, got {self.quantize!r}")
        if self.lm_loop not in LM_LOOPS:
            raise ValidationError(f"lm_loop must be one of {', '.join(LM_LOOPS)}, got {self.lm_loop!r}")
        if self.flow_steps < 1:
            raise ValidationError(f"flow_steps must be >= 1, got {self.flow_steps}")
        if self.max_batch < 1 or self.queue_size < 1:
            raise ValidationError("max_batch and queue_size must be >= 1")
        rows = tuple(self.stream_chunk_rows)
        if not rows or any(not isinstance(r, int) or r < 6 or r % 3 for r in rows):
            raise ValidationError(f"stream_chunk_rows must be multiples of 3 flow rows, each >= 6, got {rows}")
        object.__setattr__(self, "stream_chunk_rows", rows)
        if self.stream_noise not in STREAM_NOISE:
            raise ValidationError(f"stream_noise must be one of {', '.join(STREAM_NOISE)}, got {self.stream_noise!r}")
        if self.segment_max_chars is not None and self.segment_max_chars < 20:
            raise ValidationError(f"segment_max_chars must be >= 20, got {self.segment_max_chars}")
        if self.lite_search_probes < 0 or not self.lite_search_budget_s >= 0:
            raise ValidationError(f"lite_search_probes and lite_search_budget_s must be >= 0, got "
                                  f"{self.lite_search_probes} and {self.lite_search_budget_s}")
        if self.segment_pause_s < 0 or self.edit_window_s < 2:
            raise ValidationError("segment_pause_s must be >= 0 and edit_window_s >= 2 (seconds)")
        if self.model_dir is not None and not isinstance(self.model_dir, Path):
            object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def from_env(cls, **overrides) -> EngineConfig:
        """Defaults, then EDITX_* environment variables (ENV_FIELDS), then explicit (non-None) overrides."""
        env: dict = {}
        for name, (field_name, parse) in ENV_FIELDS.items():
            value = os.environ.get(name)
            if value is None or value == "":
                continue
            try:
                env[field_name] = parse(value)
            except ValueError:
                raise ValidationError(f"environment variable {name}={value!r} is not valid for {field_name}") from None
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)

    def with_(self, **changes) -> EngineConfig:
        return replace(self, **changes)

    @property
    def resolved_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        return "editx" if self.model_dir is not None else "lite"



def _env_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


def parse_int_list(value: str) -> tuple[int, ...]:
    """'15,24,48' → (15, 24, 48); ValueError for anything but comma-separated integers."""
    return tuple(int(x) for x in value.split(",") if x.strip())


# environment variable -> (EngineConfig field, parser)
ENV_FIELDS = {
    "EDITX_MODEL_DIR": ("model_dir", Path), "EDITX_BACKEND": ("backend", str), "EDITX_DEVICE": ("device", str),
    "EDITX_DTYPE": ("dtype", str), "EDITX_QUANTIZE": ("quantize", str), "EDITX_CACHE_DIR": ("cache_dir", Path),
    "EDITX_REDIS_URL": ("redis_url", str), "EDITX_THREADS": ("threads", int),
    "EDITX_ONNX_THREADS": ("onnx_threads", int), "EDITX_FLOW_STEPS": ("flow_steps", int),
    "EDITX_MAX_BATCH": ("max_batch", int), "EDITX_QUEUE_SIZE": ("queue_size", int),
    "EDITX_CACHE_MEMORY_BYTES": ("cache_memory_bytes", int), "EDITX_CACHE_DISK_BYTES": ("cache_disk_bytes", int),
    "EDITX_WARMUP": ("warmup", _env_bool), "EDITX_STREAM_CHUNK_ROWS": ("stream_chunk_rows", parse_int_list),
    "EDITX_STREAM_NOISE": ("stream_noise", str), "EDITX_STREAM_PRIME": ("stream_prime", _env_bool),
    "EDITX_OFFLINE_PRIME": ("offline_prime", _env_bool),
    "EDITX_SEGMENT_MAX_CHARS": ("segment_max_chars", int), "EDITX_SEGMENT_PAUSE_S": ("segment_pause_s", float),
    "EDITX_EDIT_WINDOW_S": ("edit_window_s", float), "EDITX_MAX_AUDIO_SECONDS": ("max_audio_seconds", float),
    "EDITX_LITE_SEARCH_PROBES": ("lite_search_probes", int),
    "EDITX_LITE_SEARCH_BUDGET_S": ("lite_search_budget_s", float),
}

def resolve_device(device: str = "auto") -> torch.device:
    """The one place that turns a device name into a torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValidationError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto → bfloat16 on CUDA, float32 on CPU."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
