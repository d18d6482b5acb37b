"""Backend selection and the Engine's prompt-cache wiring (keys, tiers from config)."""

from __future__ import annotations

import logging

from editx.config import EngineConfig
from editx.pipeline.types import PromptAudio

log = logging.getLogger(__name__)


def load_backend(config: EngineConfig):
    """editx when a Step-Audio-EditX model dir is configured (or asked for), lite otherwise."""
    name = config.resolved_backend
    if name == "editx":
        from editx.pipeline.stepaudio import StepAudioBackend

        backend = StepAudioBackend.load(config)
    else:
        from editx.lite.engine_backend import LiteEngineBackend

        backend = LiteEngineBackend.load(config)
    log.info("backend selected", extra={"backend": backend.name,
                                        "reason": "model_dir set" if config.model_dir else "no model_dir"})
    return backend


def make_cache(config: EngineConfig):
    """The tiered prompt cache named by the config, or None when caching is off."""
    if not config.cache_enabled:
        return None
    from editx.cache.tiered import TieredCache

    return TieredCache.from_config(config)


def prompt_cache_key(backend, audio: PromptAudio, text: str | None = None) -> str:
    from editx.cache.keys import prompt_key

    return prompt_key(audio.samples, audio.sample_rate, text, backend.feature_version, backend.fingerprint())
