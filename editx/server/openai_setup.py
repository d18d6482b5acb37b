"""What create_app adds for the OpenAI drop-in: the registry with built-in voices, and consent checking."""

from __future__ import annotations

import logging

from editx.server.settings import ServerSettings

log = logging.getLogger(__name__)


def registry(store, settings: ServerSettings):
    """(the voice store the app uses, the start-up step that warms its built-in voices or None)."""
    if not settings.builtin_voices:
        return store, None
    from editx.server.builtin_voices import warm, with_builtins

    store = with_builtins(store)
    if not settings.warm_builtin_voices:
        return store, None
    return store, lambda engine, stop: warm(engine, store, stop)


def consent_parts(settings: ServerSettings):
    """(consent store, consent checker) under the data dir."""
    from editx.server.consent import ConsentChecker, ConsentStore

    return ConsentStore(settings.data_dir), ConsentChecker(settings.consent_threshold)
