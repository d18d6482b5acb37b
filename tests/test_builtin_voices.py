"""Built-in voices: the bundled clips are what the manifest says, distinct speakers, warmed at start-up,
listed with builtin: true and never deleted."""

import json
import shutil

import numpy as np
import pytest

from editx.audio.io import load_audio
from editx.server.builtin_voices import ASSETS, OPENAI_VOICES, BuiltinVoices, StoreWithBuiltins, warm
from editx.server.voices import SQLiteVoiceStore, UnknownVoiceError

# scripts/measure_consent_threshold.py: the lowest similarity of one synthetic speaker saying two
# different things (30 pairs); built-in voices must stay below the whole same-speaker range.
SAME_SPEAKER_MIN = 0.89
MANIFEST = json.loads((ASSETS / "voices.json").read_text())["voices"]


def test_manifest_has_the_specs_names_and_small_clips():
    names = [v["name"] for v in MANIFEST]
    assert set(OPENAI_VOICES) <= set(names) and len(names) == len(set(names)) >= 16
    for v in MANIFEST:
        path = ASSETS / v["file"]
        assert path.stat().st_size < 80_000, v["name"]
        clip = load_audio(path)
        assert 3.5 <= clip.duration_s <= 7.0 and clip.duration_s == pytest.approx(v["duration_s"], abs=0.05)
        assert len(v["transcript"].split()) >= 8


def test_builtin_clips_are_distinct_speakers():
    """Every pair of built-in voices is less alike than one speaker saying two things (measured)."""
    from editx.lite.speaker import SpeakerEncoder

    enc = SpeakerEncoder.load()
    emb = []
    for v in MANIFEST:
        clip = load_audio(ASSETS / v["file"])
        emb.append(enc.embed(clip.samples, clip.sample_rate))
    sim = np.array(emb) @ np.array(emb).T
    off = sim[~np.eye(len(emb), dtype=bool)]
    assert off.max() < SAME_SPEAKER_MIN, off.max()


@pytest.fixture()
def two_builtins(tmp_path):
    root = tmp_path / "voices"
    root.mkdir()
    keep = MANIFEST[:2]
    for v in keep:
        shutil.copy(ASSETS / v["file"], root / v["file"])
    (root / "voices.json").write_text(json.dumps({"voices": keep}))
    return BuiltinVoices(root)


def test_registry_lists_resolves_and_protects_builtins(two_builtins, tmp_path):
    from editx.server.builtin_voices import BuiltinVoiceError

    store = StoreWithBuiltins(SQLiteVoiceStore(tmp_path / "data"), two_builtins)
    first = MANIFEST[0]["name"]
    assert [v.builtin for v in store.list()] == [True, True]
    assert store.get(first.upper()).prompt_text == MANIFEST[0]["transcript"]
    assert store.audio(first).duration_s == pytest.approx(MANIFEST[0]["duration_s"], abs=0.05)
    with pytest.raises(BuiltinVoiceError):
        store.delete(first)
    with pytest.raises(UnknownVoiceError, match=first):
        store.get("nobody")


def test_builtins_are_warmed_into_the_prompt_cache(make_engine, two_builtins, tmp_path):
    engine = make_engine()
    store = StoreWithBuiltins(SQLiteVoiceStore(tmp_path / "data"), two_builtins)
    outcomes = warm(engine, store)
    assert set(outcomes) == set(two_builtins.names) and "memory" not in outcomes.values()
    again = warm(engine, store)
    assert set(again.values()) == {"memory"}
