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
    shutdown_grace_s: float = 30.0  # after SIGTERM, requests in flight may finish for this long

    builtin_voices: bool = True  # alloy, ash, … (editx.server.builtin_voices) in the registry
    warm_builtin_voices: bool = True  # encode them into the prompt cache before /readyz says ready
    require_consent: bool = False  # every voice creation (/v1/voices too) needs a matching consent recording
    consent_threshold: float = 0.88  # GE2E same-speaker threshold (editx.server.consent, measured)

    def __post_init__(self) -> None:
        from editx.errors import ValidationError

        if self.shutdown_grace_s < 0 or self.max_request_bytes < 1:
            raise ValidationError(f"shutdown_grace_s must be >= 0 and max_request_bytes >= 1, got "
                                  f"{self.shutdown_grace_s} and {self.max_request_bytes}")

    @classmethod
    def from_env(cls, **overrides) -> ServerSettings:
        """Defaults, then EDITX_* variables (editx.config.ENV_TABLE), then explicit (non-None) overrides."""
        env = env_overrides("server")
        env.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**env)
