"""Shared fixtures: one tiny model directory per test session, hermetic caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session", autouse=True)
def _hermetic_home(tmp_path_factory):
    # onnxruntime and friends write under ~/.cache; keep test runs from touching the real home.
    home = tmp_path_factory.mktemp("home")
    old = {k: os.environ.get(k) for k in ("XDG_CACHE_HOME", "EDITX_CACHE_DIR")}
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    os.environ["EDITX_CACHE_DIR"] = str(home / "editx-cache")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A complete tiny fixture (every available component), written once per session."""
    from editx import fixtures

    root = tmp_path_factory.mktemp("models")
    fixtures.make(root, preset="tiny", seed=0)
    return root
