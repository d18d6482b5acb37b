"""Server settings: limits, keys, CORS, data dir; from the environment at the entry point."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from editx.config import env_overrides, env_value


def default_data_dir() -> Path:
    return env_value("EDITX_DATA_DIR") or Path(platformdirs.user_data_dir("editx"))


@dataclass(frozen=True)
class ServerSettings:
    api_keys: frozenset[str] = frozenset()  # empty: no auth
    max_request_bytes: int = 50 * 2**20
    max_audio_seconds: float = 300.0
    max_text_chars: int = 20_000
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are listed
    url_allowlist: tuple[str, ...] = ()  # prefixes of URLs the server may fetch audio from; empty: none
    data_dir: Path = field(default_factory=default_data_dir)
    model_name: str = "step-audio-editx"
    # a voice prompt (registered or used) outside these bounds is refused before any model work:
    # under a second carries too little of a voice; the LM window (8192 tokens at ~42 a second,
    # text included) and upstream's 30 s tokenizer chunks make a minute a generous maximum
    prompt_min_seconds: float = 1.0
    prompt_max_seconds: float = 60.0
    max_streams: int = 32  # streaming responses open at once; one more gets 429 + Retry-After
    shutdown_grace_s: float = 30.0  # in-flight requests may finish for this long after SIGTERM

    def __post_init__(self) -> None:
        from editx.errors import ValidationError

        if not 0 < self.prompt_min_seconds <= self.prompt_max_seconds:
            raise ValidationError(f"prompt seconds must satisfy 0 < min <= max, got min={self.prompt_min_seconds} "
                                  f"max={self.prompt_max_seconds}")
        if self.max_streams < 1 or self.shutdown_grace_s < 0 or self.max_request_bytes < 1:
            raise ValidationError("max_streams and max_request_bytes must be >= 1, shutdown_grace_s >= 0")

    @classmethod
    def from_env(cls, **overrides) -> ServerSettings:
        """Defaults, then EDITX_* variables (editx.config.ENV_TABLE), then explicit (non-None) overrides."""
        env = env_overrides("server")
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)
