"""Lite voice matching past blending: CMA-ES, the timbre search, no-voice prompts, budgets, Japanese text."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from editx.errors import BackendUnsupportedError, ValidationError
from editx.lite import cmaes, timbre
from editx.lite.japanese import detect_language

# --- CMA-ES (pure) ----------------------------------------------------------------------------


def _sphere(center: np.ndarray):
    calls = []

    def f(x: np.ndarray) -> float:
        calls.append(np.array(x))
        return value(x)

    def value(x: np.ndarray) -> float:
        return -float(np.sum((x - center) ** 2))

    f.value = value
    return f, calls


def test_cmaes_climbs_a_concave_objective_and_counts_its_calls():
    center = np.linspace(-1.0, 1.0, 10)
    f, calls = _sphere(center)
    r = cmaes.maximize(f, np.zeros(10), 0.5, max_evals=600, population=10, seed=1)
    assert r.evals == len(calls) == 600
    assert np.array_equal(calls[0], np.zeros(10))  # the start point is scored first
    assert r.start_score == pytest.approx(-float(np.sum(center ** 2)))
    # From |x - c|^2 = 3.9 at the start to well under 1 % of it.
    assert -r.score < 0.01 * -r.start_score
    assert r.score == max(f.value(c) for c in calls) == f.value(r.x)  # the answer is the best point scored
    assert not r.out_of_time and r.generations == 59 and len(r.history) == r.generations
    assert all(a <= b for a, b in zip(r.history, r.history[1:]))


def test_cmaes_is_seeded_and_never_returns_worse_than_its_start():
    f, _ = _sphere(np.zeros(6))  # the start point is already the optimum
    a = cmaes.maximize(f, np.zeros(6), 1.0, max_evals=25, seed=3)
    b = cmaes.maximize(f, np.zeros(6), 1.0, max_evals=25, seed=3)
    assert a.score == b.score == 0.0 and np.array_equal(a.x, np.zeros(6))
    g, calls_g = _sphere(np.ones(6))
    h, calls_h = _sphere(np.ones(6))
    cmaes.maximize(g, np.zeros(6), 1.0, max_evals=25, seed=3)
    cmaes.maximize(h, np.zeros(6), 1.0, max_evals=25, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(calls_g, calls_h))


def test_cmaes_time_budget_returns_best_so_far_and_says_so():
    now = [0.0]

    def clock() -> float:
        return now[0]

    f, calls = _sphere(np.full(4, 2.0))

    def slow(x):
        now[0] += 1.0  # each evaluation "takes" one second
        return f(x)

    r = cmaes.maximize(slow, np.zeros(4), 1.0, max_evals=100, budget_s=5.5, population=4, seed=0, clock=clock)
    assert r.out_of_time and 2 <= r.evals <= 7 < 100
    assert r.score == max(f.value(c) for c in calls)
    assert r.score >= r.start_score


@pytest.mark.parametrize("kw", [dict(sigma0=0.0), dict(sigma0=math.nan), dict(max_evals=0), dict(population=1)])
def test_cmaes_rejects_bad_settings(kw):
    args = dict(sigma0=0.5, max_evals=10) | kw
    with pytest.raises(ValidationError):
        cmaes.maximize(lambda x: 0.0, np.zeros(3), args.pop("sigma0"), **args)


# --- timbre search on a stand-in objective ----------------------------------------------------


def test_timbre_search_moves_only_the_timbre_half_and_respects_the_probe_budget():
    rng = np.random.default_rng(0)
    voices = {f"v{i}": rng.normal(0, 0.3, (510, 256)).astype(np.float32) for i in range(5)}
    scale = timbre.timbre_scale(voices)
    assert scale.shape == (128,) and (scale > 0).all()
    seed_table = voices["v0"]
    # A stand-in for "GE2E similarity": it depends on a few timbre directions only (here 4), and the
    # prompt sits one between-voice spread away from the seed along them.
    start = seed_table[:, :128].mean(axis=0)
    calls = []

    def score(table: np.ndarray) -> float:
        calls.append(table)
        moved = (table[:, :128].mean(axis=0) - start) / scale
        return -float(np.sum((moved[:4] - 1.0) ** 2))

    found = timbre.search(seed_table, scale, score, max_probes=40, budget_s=None)
    assert found.probes == len(calls) == 40 and not found.out_of_time
    assert found.start_similarity == pytest.approx(-4.0, rel=1e-4)
    assert found.similarity > found.start_similarity + 0.5
    moved = timbre.with_offset(seed_table, found.offset)
    assert np.array_equal(moved[:, 128:], seed_table[:, 128:])  # prosody half untouched
    assert score(moved) == pytest.approx(found.similarity, rel=1e-5)
    assert np.all(np.abs(found.offset) <= timbre.MAX_OFFSET * scale + 1e-6)


def test_voice_match_stage_says_how_the_search_went():
    from editx.config import EngineConfig
    from editx.lite.engine_backend import LiteEngineBackend
    from editx.lite.voice import VoiceEncoding
    from editx.pipeline.types import PromptAudio
    from editx.telemetry.timing import Timeline

    class _Lite:  # stands in for LiteBackend: a search cut short by its time budget
        sample_rate = 24_000
        search_probes = 9

        def encode_voice(self, samples, sample_rate):
            return VoiceEncoding(("a",), np.ones(1, np.float32), np.zeros((510, 256), np.float32), 0.71234, None,
                                 np.full(128, 0.1, np.float32), 9, True)

    tl = Timeline("clone")
    enc = LiteEngineBackend(EngineConfig(backend="lite"), _Lite()).encode_prompt(
        PromptAudio(np.zeros(16_000, np.float32), 16_000), tl)
    stage = next(s for s in tl.to_dict()["stages"] if s["name"] == "voice_match")
    assert stage["out_of_time"] is True and stage["search_probes"] == 9 and stage["similarity"] == 0.7123
    assert enc.out_of_time and "timbre offset" in enc.describe()
    # voices matched with another search budget are other cache entries
    other = type("_Other", (_Lite,), {"search_probes": 0})()
    assert LiteEngineBackend(EngineConfig(backend="lite"), other).feature_version != \
        LiteEngineBackend(EngineConfig(backend="lite"), _Lite()).feature_version


# --- language detection -----------------------------------------------------------------------


def test_language_detection_and_clear_errors_for_chinese_and_korean():
    assert detect_language("Hello there.") == "en"
    assert detect_language("こんにちは、世界。") == "ja"
    assert detect_language("東京タワーに行きます。") == "ja"  # kanji with kana
    assert detect_language("東京", language="ja") == "ja"
    assert detect_language("hello", language="EN-us") == "en"
    with pytest.raises(BackendUnsupportedError, match="Chinese text needs the Step-Audio-EditX"):
        detect_language("今天天气很好。")
    with pytest.raises(BackendUnsupportedError, match="Korean text needs the Step-Audio-EditX"):
        detect_language("안녕하세요")
    with pytest.raises(BackendUnsupportedError, match="editx backend|--backend editx"):
        detect_language("hello", language="zh")
    with pytest.raises(ValidationError, match="en, ja"):
        detect_language("hello", language="fr")


# --- the real backend -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backend(lite_backend):
    return lite_backend


def _reference() -> tuple[np.ndarray, int]:
    x, sr = sf.read(Path(__file__).resolve().parents[1] / "editx" / "assets" / "reference_en.wav", dtype="float32")
    return x, sr


@pytest.mark.parametrize("kind", ["silence", "noise", "chord"])
def test_prompt_without_a_voice_is_refused_with_a_clear_error(backend, kind):
    sr = 16_000
    t = np.arange(4 * sr) / sr
    rng = np.random.default_rng(0)
    clip = {"silence": np.zeros_like(t),
            "noise": 0.1 * rng.standard_normal(t.size),
            # a sustained major chord with a slow tremolo: music, no speech
            "chord": sum(0.1 * np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) * (1 + 0.3 * np.sin(3 * t)),
            }[kind].astype(np.float32)
    with pytest.raises(ValidationError, match="no voice in it"):
        backend.encode_voice(clip, sr, search_probes=0)


def test_search_out_of_time_keeps_the_blend_and_says_so(backend, caplog):
    ref, sr = _reference()
    with caplog.at_level(logging.WARNING, logger="editx.lite.backend"):
        enc = backend.encode_voice(ref, sr, max_probes=0, search_probes=10, search_budget_s=0.0)
    assert enc.out_of_time and enc.search_probes == 1  # only the start point (the blend) was scored
    assert enc.offset is None  # nothing beat the blend, so the blend stands
    assert any("ran out of its" in r.getMessage() for r in caplog.records)
    blend = backend.encode_voice(ref, sr, max_probes=0, search_probes=0)
    np.testing.assert_array_equal(enc.table, blend.table)
    assert not blend.out_of_time and blend.search_probes == 0


@pytest.mark.slow
def test_search_beats_or_keeps_the_blend_and_survives_the_cache_form(backend):
    from editx.config import EngineConfig
    from editx.lite.backend import SEARCH_PROBES
    from editx.lite.voice import VoiceEncoding

    ref, sr = _reference()
    blend = backend.encode_voice(ref, sr, max_probes=0, search_probes=0)
    # the recommended opt-in search (8 probes; no time limit here, so it is deterministic)
    assert SEARCH_PROBES == EngineConfig().lite_search_probes == backend.search_probes == 0  # default: blend
    enc = backend.encode_voice(ref, sr, max_probes=0, search_probes=8, search_budget_s=math.inf)
    assert enc.search_probes == 8 and not enc.out_of_time
    # never below the blend (up to float32 rounding of the cosine: Kokoro's threads may sum in another order)
    assert enc.similarity >= blend.similarity - 1e-5
    if enc.offset is not None:
        np.testing.assert_array_equal(enc.table[:, 128:], blend.table[:, 128:])
    again = VoiceEncoding.from_tensors(*enc.to_tensors())
    np.testing.assert_array_equal(again.table, enc.table)
    assert again.search_probes == 8 and again.out_of_time is False
    if enc.offset is not None:
        np.testing.assert_array_equal(again.offset, enc.offset)


def test_japanese_text_is_spoken(backend):
    from editx.lite import edits
    from editx.lite.backend import SAMPLE_RATE

    pytest.importorskip("pyopenjtalk", reason="Japanese front end (pyopenjtalk-plus) not installed")
    text = "こんにちは。今日はいい天気ですね。"
    phonemes = backend.g2p_ja.phonemize(text)
    assert phonemes.count(".") == 2 and all(c in backend.g2p.vocab.ids for c in phonemes)
    audio = backend.synthesize(text, backend.voice())
    seconds = audio.size / SAMPLE_RATE
    # ~18 morae at a natural 6-9 morae per second, plus the pause between the sentences
    assert 1.5 < seconds < 5.0
    speech = edits.speech_mask(backend.vad.probabilities(audio, SAMPLE_RATE))
    assert speech.mean() > 0.5  # mostly voice, not silence or noise
    same = backend.synthesize("今日は", backend.voice(), language="ja")  # kanji + kana, explicit language
    assert 0.2 < same.size / SAMPLE_RATE < 2.0
