"""Engine configuration: frozen dataclasses, environment overrides, and the one device/dtype decision."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from editx.errors import ValidationError
from editx.verify.policy import DEFAULT_ATTEMPTS, DEFAULT_MAX_WER, DEFAULT_MIN_SPEAKER_SIM, VerifyPolicy

if TYPE_CHECKING:  # torch is imported where a device is resolved, so the env table stays light
    import torch

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
# Streaming: growing flow chunks in 25 Hz flow rows (40 ms each; 3 rows = one group of 5 LM tokens). The
# first audio needs first + 3 lookahead rows: a 6-row first chunk (upstream's chunk_size_list starts at 15)
# waits for half the LM tokens and solves a smaller first DiT chunk (issue 22: TTFA 0.185 -> 0.124 of offline).
STREAM_CHUNK_ROWS = (6, 24, 48)
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
    dtype: str = "auto"  # auto: bfloat16 on CUDA and bf16-capable CPUs, float32 elsewhere (resolve_dtype)
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
    max_audio_seconds: float = 600.0  # the longest clip an edit takes (it is edited in parts)
    min_prompt_s: float = 0.5  # shorter prompt / edit inputs are refused: too little speech to encode
    max_prompt_s: float = 60.0  # longer clone prompts are refused (and editx refuses any too long for the LM)
    queue_size: int = 64  # requests waiting for the worker; more get QueueFullError (429 + Retry-After)
    max_batch: int = 8
    max_streams: int = 32  # streaming requests open at once; more get StreamLimitError (429)
    stream_buffer_s: float = 30.0  # unread audio (s) that pauses a stream between rounds; 4x cancels it
    stream_stall_s: float = 120.0  # a paused stream whose reader reads nothing this long is cancelled
    # which job's next unit runs (pipeline/stream_schedule.py): "fair" (new streams' first audio early,
    # playing streams ahead of their listeners, offline work in the gaps) or "fifo" (admission order)
    stream_schedule: str = "fair"
    stuck_after_s: float = 120.0  # health(): the worker is stuck after this long without progress
    close_grace_s: float = 30.0  # close(): how long admitted requests may still finish
    warmup: bool = True
    stream_chunk_rows: tuple[int, ...] = STREAM_CHUNK_ROWS  # per streamed chunk: first, second, ... (last repeats)
    stream_noise: str = "offline"
    stream_prime: bool = True  # prompt side of the streaming flow made once per voice (False: per request)
    # offline clones decode against that per-voice prime too: far less flow work, and closer to
    # upstream's one-pass output than two one-pass runs with different noise are to each other
    # (docs/PERFORMANCE.md); False (--exact-flow) runs upstream's one pass
    offline_prime: bool = True
    segment_max_chars: int | None = None  # long texts go in segments of this size (None: 250, CJK-heavy 100)
    segment_pause_s: float = 0.25  # silence between synthesised text segments
    edit_window_s: float = 25.0  # longer clips are edited in parts cut at silences
    # output verification (editx.verify): the default for requests that do not say; thresholds and tries
    verify: bool = False
    verify_max_wer: float = DEFAULT_MAX_WER  # WER (CER for Chinese/Japanese) at most this
    verify_min_speaker_sim: float = DEFAULT_MIN_SPEAKER_SIM  # similarity to the prompt / input clip at least this
    verify_attempts: int = DEFAULT_ATTEMPTS  # generations in all, each with a new seed, before the best is returned
    asr_model_dir: Path | None = None  # a CTranslate2 Whisper folder; None: the bundled tiny.en (English)
    # lite voice matching: timbre-search probes and seconds per new voice after the blend (0: blend
    # only, the default). A short search (8 probes) raised the held-out similarity on the real-voice set
    # by about +0.01 per clip at ~4x the match's cost, longer ones over-fit (docs/PERFORMANCE.md), so it
    # stays opt-in; 25 s bounds it on a busy machine (best so far, logged).
    lite_search_probes: int = 0
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
        if self.max_batch < 1 or self.queue_size < 1 or self.max_streams < 1:
            raise ValidationError("max_batch, queue_size and max_streams must be >= 1")
        if not (0 <= self.min_prompt_s < self.max_prompt_s):
            raise ValidationError(f"min_prompt_s must be >= 0 and below max_prompt_s, got {self.min_prompt_s} "
                                  f"and {self.max_prompt_s}")
        for name, value in (("stream_buffer_s", self.stream_buffer_s), ("stream_stall_s", self.stream_stall_s),
                            ("stuck_after_s", self.stuck_after_s)):
            if not value > 0:
                raise ValidationError(f"{name} must be > 0 (seconds), got {value}")
        if self.close_grace_s < 0:
            raise ValidationError(f"close_grace_s must be >= 0, got {self.close_grace_s}")
        rows = tuple(self.stream_chunk_rows)
        if not rows or any(not isinstance(r, int) or r < 6 or r % 3 for r in rows):
            raise ValidationError(f"stream_chunk_rows must be multiples of 3 flow rows, each >= 6, got {rows}")
        object.__setattr__(self, "stream_chunk_rows", rows)
        if self.stream_schedule not in ("fair", "fifo"):
            raise ValidationError(f"stream_schedule must be fair or fifo, got {self.stream_schedule!r}")
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
        if self.asr_model_dir is not None and not isinstance(self.asr_model_dir, Path):
            object.__setattr__(self, "asr_model_dir", Path(self.asr_model_dir))
        VerifyPolicy.from_config(self)  # the verify_* thresholds, checked with the ranges requests get
        if self.cache_dir is not None and not isinstance(self.cache_dir, Path):
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    @classmethod
    def from_env(cls, **overrides) -> EngineConfig:
        """Defaults, then EDITX_* environment variables (ENV_FIELDS), then explicit (non-None) overrides."""
        env = env_overrides("engine")
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


def parse_str_list(value: str) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _str_set(value: str) -> frozenset[str]:
    return frozenset(parse_str_list(value))


@dataclass(frozen=True)
class EnvVar:
    """One EDITX_* variable: how to parse it and which settings it fills (EngineConfig field,
    ServerSettings field); `other` names readers outside those two (paths, the voice registry)."""

    parse: Callable[[str], Any]
    engine: str | None = None
    server: str | None = None
    other: str | None = None


# The one table of EDITX_* environment variables; nothing else in editx reads os.environ for them.
ENV_TABLE: dict[str, EnvVar] = {
    "EDITX_MODEL_DIR": EnvVar(Path, engine="model_dir"), "EDITX_BACKEND": EnvVar(str, engine="backend"),
    "EDITX_DEVICE": EnvVar(str, engine="device"), "EDITX_DTYPE": EnvVar(str, engine="dtype"),
    "EDITX_QUANTIZE": EnvVar(str, engine="quantize"),
    "EDITX_CACHE_DIR": EnvVar(Path, engine="cache_dir", other="prompt cache and bench fixture root"),
    "EDITX_REDIS_URL": EnvVar(str, engine="redis_url", other="voice registry unless EDITX_VOICES_URL"),
    "EDITX_THREADS": EnvVar(int, engine="threads"), "EDITX_ONNX_THREADS": EnvVar(int, engine="onnx_threads"),
    "EDITX_FLOW_STEPS": EnvVar(int, engine="flow_steps"), "EDITX_MAX_BATCH": EnvVar(int, engine="max_batch"),
    "EDITX_QUEUE_SIZE": EnvVar(int, engine="queue_size"),
    "EDITX_CACHE_MEMORY_BYTES": EnvVar(int, engine="cache_memory_bytes"),
    "EDITX_CACHE_DISK_BYTES": EnvVar(int, engine="cache_disk_bytes"),
    "EDITX_WARMUP": EnvVar(_env_bool, engine="warmup"),
    "EDITX_STREAM_CHUNK_ROWS": EnvVar(parse_int_list, engine="stream_chunk_rows"),
    "EDITX_STREAM_NOISE": EnvVar(str, engine="stream_noise"),
    "EDITX_STREAM_PRIME": EnvVar(_env_bool, engine="stream_prime"),
    "EDITX_OFFLINE_PRIME": EnvVar(_env_bool, engine="offline_prime"),
    "EDITX_SEGMENT_MAX_CHARS": EnvVar(int, engine="segment_max_chars"),
    "EDITX_SEGMENT_PAUSE_S": EnvVar(float, engine="segment_pause_s"),
    "EDITX_EDIT_WINDOW_S": EnvVar(float, engine="edit_window_s"),
    "EDITX_MAX_AUDIO_SECONDS": EnvVar(float, engine="max_audio_seconds", server="max_audio_seconds"),
    "EDITX_VERIFY": EnvVar(_env_bool, engine="verify"),
    "EDITX_VERIFY_MAX_WER": EnvVar(float, engine="verify_max_wer"),
    "EDITX_VERIFY_MIN_SPEAKER_SIM": EnvVar(float, engine="verify_min_speaker_sim"),
    "EDITX_VERIFY_ATTEMPTS": EnvVar(int, engine="verify_attempts"),
    "EDITX_ASR_MODEL_DIR": EnvVar(Path, engine="asr_model_dir"),
    "EDITX_MIN_PROMPT_S": EnvVar(float, engine="min_prompt_s"),
    "EDITX_MAX_PROMPT_S": EnvVar(float, engine="max_prompt_s"),
    "EDITX_MAX_STREAMS": EnvVar(int, engine="max_streams"),
    "EDITX_STREAM_BUFFER_S": EnvVar(float, engine="stream_buffer_s"),
    "EDITX_STREAM_STALL_S": EnvVar(float, engine="stream_stall_s"),
    "EDITX_STREAM_SCHEDULE": EnvVar(str, engine="stream_schedule"),
    "EDITX_STUCK_AFTER_S": EnvVar(float, engine="stuck_after_s"),
    "EDITX_CLOSE_GRACE_S": EnvVar(float, engine="close_grace_s"),
    "EDITX_LITE_SEARCH_PROBES": EnvVar(int, engine="lite_search_probes"),
    "EDITX_LITE_SEARCH_BUDGET_S": EnvVar(float, engine="lite_search_budget_s"),
    # server (ServerSettings.from_env)
    "EDITX_DATA_DIR": EnvVar(Path, server="data_dir", other="lite's assembled model files"),
    "EDITX_API_KEYS": EnvVar(_str_set, server="api_keys"),
    "EDITX_CORS_ORIGINS": EnvVar(parse_str_list, server="cors_origins"),
    "EDITX_URL_ALLOWLIST": EnvVar(parse_str_list, server="url_allowlist"),
    "EDITX_MAX_REQUEST_BYTES": EnvVar(int, server="max_request_bytes"),
    "EDITX_SHUTDOWN_GRACE_S": EnvVar(float, server="shutdown_grace_s"),
    "EDITX_BUILTIN_VOICES": EnvVar(_env_bool, server="builtin_voices"),
    "EDITX_WARM_BUILTIN_VOICES": EnvVar(_env_bool, server="warm_builtin_voices"),
    "EDITX_REQUIRE_VOICE_CONSENT": EnvVar(_env_bool, server="require_consent"),
    "EDITX_CONSENT_THRESHOLD": EnvVar(float, server="consent_threshold"),
    "EDITX_VOICES_URL": EnvVar(str, other="a separate Redis for the voice registry"),
    "EDITX_SESSION_TTL_S": EnvVar(float, other="edit sessions: expiry after the last change"),
    "EDITX_SESSION_MAX_VERSIONS": EnvVar(int, other="edit sessions: versions per session"),
    "EDITX_SESSION_MAX_BYTES": EnvVar(int, other="edit sessions: audio bytes in all (SQLite store)"),
}

# environment variable -> (EngineConfig field, parser): the engine's part of ENV_TABLE
ENV_FIELDS = {name: (var.engine, var.parse) for name, var in ENV_TABLE.items() if var.engine}


def env_value(name: str) -> Any:
    """The parsed value of one variable of ENV_TABLE, or None when unset or empty."""
    var = ENV_TABLE[name]  # KeyError: every variable must be listed in the table
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return var.parse(value)
    except ValueError:
        target = var.engine or var.server or var.other
        raise ValidationError(f"environment variable {name}={value!r} is not valid for {target}") from None


def env_overrides(section: str) -> dict[str, Any]:
    """{field: parsed value} of every set variable that fills a field of `section` ("engine" or "server")."""
    out: dict[str, Any] = {}
    for name, var in ENV_TABLE.items():
        target = {"engine": var.engine, "server": var.server}[section]
        if target is not None and (value := env_value(name)) is not None:
            out[target] = value
    return out


def resolve_device(device: str = "auto") -> torch.device:
    """The one place that turns a device name into a torch.device."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValidationError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


# /proc/cpuinfo flags that mean native bfloat16 matmuls (oneDNN uses them): AVX512-BF16 and AMX on
# x86; the Arm BF16 extension (ARMv8.6) on aarch64. Without one, bf16 matmuls are emulated and slower
# than float32, so `auto` stays float32 and an explicit bfloat16 is refused.
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU's feature flags (x86 `flags`, Arm `Features`); empty where /proc/cpuinfo is absent."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_supports_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether this CPU runs bfloat16 matmuls natively (detected, never assumed)."""
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in CPU_BF16_FLAGS)


def supported_dtypes(device: torch.device, *, cpu_bf16: bool | None = None) -> tuple[str, ...]:
    """The compute dtypes `device` runs at full speed, best first."""
    import torch

    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else True
        return ("bfloat16", "float16", "float32") if bf16 else ("float16", "float32")
    if device.type == "cpu":
        bf16 = cpu_supports_bf16() if cpu_bf16 is None else cpu_bf16
        return ("bfloat16", "float32") if bf16 else ("float32",)
    return ("float32",)


def resolve_dtype(dtype: str, device: torch.device, *, cpu_bf16: bool | None = None) -> torch.dtype:
    """auto → bfloat16 on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX, Arm BF16), float32
    elsewhere. An explicit dtype the device cannot run well is refused with what it supports.
    `cpu_bf16` overrides the CPU detection (tests)."""
    import torch

    supported = supported_dtypes(device, cpu_bf16=cpu_bf16)
    if dtype == "auto":
        dtype = supported[0]
    elif dtype not in supported:
        why = ""
        if device.type == "cpu" and dtype == "bfloat16":
            why = " (this CPU has no AVX512-BF16, AMX or Arm BF16: bfloat16 would be emulated, slower than float32)"
        elif device.type == "cpu":
            why = " (CPU float16 matmuls are emulated)"
        raise ValidationError(f"dtype {dtype!r} is not supported on {device}{why}; "
                              f"this device supports {', '.join(supported)} (or auto)")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
