"""Long-form segmentation: text splitting (fixed cases and properties), silence splitting, joins."""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import assert_close_rel
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from editx.errors import AudioError, ValidationError
from editx.pipeline.segment import (
    crossfade_concat,
    iter_join,
    join_segments,
    max_discontinuity,
    normalize_text,
    split_audio_at_silences,
    split_text,
    split_transcript_for_spans,
)

DIALECT = re.compile(r"\[(Sichuanese|Cantonese|Japanese|Korean)\] ?")
PROTECTED = re.compile(r"https?://[!-~]*[A-Za-z0-9/]|[A-Za-z0-9.]+@[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)+|\[[^\[\]\s]+\]")


def stitch(text: str, segments: list[str]) -> list[tuple[int, int]]:
    """Check the segments are the normalised text in order (one space or nothing between them, a
    leading dialect tag repeated); return each segment's span in the normalised text."""
    norm = normalize_text(text)
    prefix = m.group() if (m := DIALECT.match(norm)) and len(segments) > 1 else ""
    pos, spans = 0, []
    for k, seg in enumerate(segments):
        assert seg and seg == seg.strip(), seg
        if prefix:
            assert seg.startswith(prefix), (seg, prefix)
            if k:
                seg = seg[len(prefix):]
        if k:
            pos += norm[pos] == " "
        assert norm.startswith(seg, pos), (norm[pos:pos + 40], seg[:40])
        spans.append((pos, pos + len(seg)))
        pos += len(seg)
    assert pos == len(norm)
    return spans


def cuts_of(spans: list[tuple[int, int]]) -> list[int]:
    return [e for _, e in spans[:-1]]  # where each cut is (a space between segments follows it)


# --- fixed cases ----------------------------------------------------------------------------------------
def test_short_text_is_one_segment_and_whitespace_is_normalised():
    assert split_text("  Hello,\n\t world!  ") == ["Hello, world!"]
    assert split_text("") == [] and split_text(" \n ") == []
    assert normalize_text("a\u3000\u3000b\n\nc") == "a b c"


@pytest.mark.parametrize("text, max_chars, expected", [
    ("Dr. Smith arrived at 3.14 p.m. today. He left early.", 40,
     ["Dr. Smith arrived at 3.14 p.m. today.", "He left early."]),
    ("We need e.g. apples and pears here. Then we go home now.", 40,
     ["We need e.g. apples and pears here.", "Then we go home now."]),
    ("J. K. Rowling wrote many books. They sold well indeed.", 35,
     ["J. K. Rowling wrote many books.", "They sold well indeed."]),
    ("See No. 5 and Fig. 2 there. I said no. Then we met on the 21st. Then left.", 30,
     ["See No. 5 and Fig. 2 there.", "I said no.", "Then we met on the 21st.", "Then left."]),
    ("Wait... what did you say? I said nothing at all, really.", 30,
     ["Wait... what did you say?", "I said nothing at all, really."]),
    ('"Really?" she asked him twice. "Yes!" he replied then.', 32,
     ['"Really?" she asked him twice.', '"Yes!" he replied then.']),
    ("Visit https://example.com/a.b?c=1. Or mail me at jo.x@mail.example.org. Bye.", 42,
     ["Visit https://example.com/a.b?c=1.", "Or mail me at jo.x@mail.example.org. Bye."]),
    ("今天天气很好。我们去公园散步吧！你觉得怎么样？", 12, ["今天天气很好。", "我们去公园散步吧！", "你觉得怎么样？"]),
    ("他说：“今天很好。”然后走了。我们也走吧。", 12, ["他说：“今天很好。”", "然后走了。我们也走吧。"]),
    ("今天天气很好.我们去公园散步吧!好的", 11, ["今天天气很好.", "我们去公园散步吧!好的"]),
    ("我喜欢用Python写代码。它很简单，也很强大，大家都喜欢它。", 17,
     ["我喜欢用Python写代码。", "它很简单，也很强大，大家都喜欢它。"]),
])
def test_sentence_boundaries(text, max_chars, expected):
    assert split_text(text, max_chars=max_chars, min_chars=0) == expected
    stitch(text, expected)


def test_long_english_sentence_splits_at_clauses_then_words():
    text = ("When the rain stopped, the children ran outside, laughing and shouting, and the dog followed "
            "them all the way down to the river where the old boat was tied to a post")
    segs = split_text(text, max_chars=50, min_chars=10)
    cuts = cuts_of(stitch(text, segs))
    assert all(len(s) <= 50 for s in segs)
    norm = normalize_text(text)
    assert norm[cuts[0] - 1] == ","  # the first cut is a clause cut
    assert all(norm[c] == " " for c in cuts)
    assert len(segs) == 4  # 163 characters need four  # every cut at a space, never inside a word


def test_long_chinese_sentence_without_punctuation_splits_between_characters():
    text = "这是一个非常非常长的句子没有任何标点符号" * 8  # 160 characters, no punctuation, no spaces
    segs = split_text(text, max_chars=50, min_chars=10)
    stitch(text, segs)
    assert len(segs) == 4 and all(len(s) == 40 for s in segs)  # balanced, not 50+50+50+10


def test_clause_punctuation_preferred_in_long_chinese_sentence():
    text = "我们今天早上很早就起床了，吃过早饭以后一起去了公园，在湖边走了很久，最后才回家休息"
    segs = split_text(text, max_chars=30, min_chars=5)
    stitch(text, segs)
    assert all(s.endswith("，") for s in segs[:-1])


def test_tags_stay_attached_and_dialect_prefix_repeats():
    text = "[Sichuanese]今天天气很好[Laughter]。我们去公园散步吧！你觉得怎么样？我觉得很好。"
    segs = split_text(text, max_chars=30, min_chars=0)
    stitch(text, segs)
    assert len(segs) > 1 and all(s.startswith("[Sichuanese]") and len(s) <= 30 for s in segs)
    assert any("很好[Laughter]。" in s for s in segs)
    text = "That is so funny. [Laughter] Anyway, let us move on to the next topic of today."
    segs = split_text(text, max_chars=30, min_chars=0)
    stitch(text, segs)
    assert all(re.sub(r"\[\w+\]", "", s).strip(" .,") for s in segs)  # no tag-only segment
    assert "[Laughter] Anyway," in " ".join(segs) and not any(s.endswith("[Laughter]") for s in segs)


def test_short_trailing_fragment_merges_and_paragraphs_are_preferred_cuts():
    text = "This is the first sentence of the text. This one is the second. Ok."
    assert split_text(text, max_chars=45, min_chars=20)[-1] == "This one is the second. Ok."
    text = "Alpha beta gamma. Delta epsilon.\n\nZeta eta theta iota. Kappa."
    assert split_text(text, max_chars=40, min_chars=0) == ["Alpha beta gamma. Delta epsilon.",
                                                          "Zeta eta theta iota. Kappa."]


def test_word_longer_than_max_is_kept_whole():
    word = "Pneumonoultramicroscopicsilicovolcanoconiosis"
    segs = split_text(f"It is {word} for sure.", max_chars=20, min_chars=0)
    assert segs == ["It is", word, "for sure."]


def test_bad_arguments():
    with pytest.raises(ValidationError):
        split_text("x", max_chars=10, min_chars=20)
    with pytest.raises(ValidationError):
        split_text("x", lang="klingon")
    with pytest.raises(ValidationError):
        split_text("[Sichuanese] hello there", max_chars=13)


def test_lang_cjk_drops_english_period_rules():
    text = "我们见到了Dr. Wang先生。然后回家。"
    assert split_text(text, max_chars=16, min_chars=0, lang="en")[0] == "我们见到了Dr. Wang先生。"
    assert split_text(text, max_chars=16, min_chars=0, lang="zh")[0] == "我们见到了Dr."


# --- properties -----------------------------------------------------------------------------------------
TOKENS = ["the", "quick", "brown", "fox", "Dr.", "e.g.", "3.14", "1,000", "U.S.", "don't", "well-known",
          "Hello", "World", "ok", "A.", "https://ex.com/p?q=1", "jo@x.org", "[Laughter]", "[Breathing]",
          "你好", "我们", "今天天气很好", "去公园", "散步", "Python", "ABCDEFGHIJ", "3:30",
          ".", ",", "!", "?", "...", ";", ":", "—", "。", "，", "、", "！", "？", "；", "……", "“", "”", "(", ")", '"']
SEPS = ["", " ", " ", "  ", "\n", "\n\n", "\t", "\u3000"]


@st.composite
def texts(draw):
    """Random English/Chinese/mixed texts; two ASCII words are never glued into one."""
    prefix = draw(st.sampled_from(["", "", "[Sichuanese]", "[Cantonese] "]))
    out = []
    for _ in range(draw(st.integers(1, 120))):
        token = draw(st.sampled_from(TOKENS))
        glued = out and out[-1][-1].isascii() and out[-1][-1].isalnum() and token[0].isascii() and token[0].isalnum()
        out.append(token + draw(st.sampled_from(SEPS[1:] if glued else SEPS)))
    return prefix + "".join(out)


def unbreakable_runs(norm: str) -> int:
    """Longest stretch with no space and no CJK letter (no cut is possible inside it)."""
    return max((len(r) for r in re.split(r"[\s\u4e00-\u9fff]+", norm)), default=0)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts(), max_chars=st.integers(40, 120), min_chars=st.integers(0, 30),
       lang=st.sampled_from([None, "en", "zh"]))
def test_split_text_properties(text, max_chars, min_chars, lang):
    segs = split_text(text, max_chars=max_chars, min_chars=min_chars, lang=lang)
    norm = normalize_text(text)
    spans = stitch(text, segs)  # coverage, order, no loss, no duplication
    if len(norm) <= max_chars:
        assert segs == [norm]
    if unbreakable_runs(norm) <= max_chars - len("[Cantonese] "):  # the longest prefix
        assert all(len(s) <= max_chars for s in segs)
    protected = [m.span() for m in PROTECTED.finditer(norm)]
    for c in cuts_of(spans):
        assert not (norm[c - 1].isascii() and norm[c - 1].isalnum() and norm[c].isascii() and norm[c].isalnum())
        assert not any(a < c < b for a, b in protected), (norm, c)
    prefix = len(m.group()) if (m := DIALECT.match(norm)) and len(segs) > 1 else 0
    for k, s in enumerate(segs):
        if len(s) < min_chars:  # a short segment could not merge with a neighbour
            for lo in (k - 1, k):
                if 0 <= lo and lo + 1 < len(segs):
                    start = spans[lo][0] - (prefix if lo else 0)
                    assert prefix + spans[lo + 1][1] - start > max_chars, (segs, k)


@settings(max_examples=100, deadline=None, database=None)
@given(text=texts(), n=st.integers(1, 6), data=st.data())
def test_split_transcript_properties(text, n, data):
    lengths = data.draw(st.lists(st.integers(1, 1000), min_size=n, max_size=n))
    bounds = np.cumsum([0, *lengths])
    spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
    pieces = split_transcript_for_spans(text, spans, 1000)
    assert len(pieces) == n
    norm = normalize_text(text)
    assert " ".join(p for p in pieces if p).replace(" ", "") == norm.replace(" ", "")


def test_split_transcript_proportional_and_snaps_to_punctuation():
    text = "One two three four five six. Seven eight nine ten eleven twelve."
    assert split_transcript_for_spans(text, [(0, 480), (480, 1000)], 100) == [
        "One two three four five six.", "Seven eight nine ten eleven twelve."]
    pieces = split_transcript_for_spans("a b c d e f g h i j", [(0, 30), (30, 100)], 10)
    assert pieces == ["a b c", "d e f g h i j"]
    assert split_transcript_for_spans("今天天气很好我们去公园散步", [(0, 6), (6, 13)], 1) == ["今天天气很好", "我们去公园散步"]
    assert split_transcript_for_spans("hi", [(0, 8), (8, 10)], 1) == ["hi", ""]
    assert split_transcript_for_spans("hi", [(0, 2), (2, 10)], 1) == ["", "hi"]


# --- audio splitting ------------------------------------------------------------------------------------
SR = 16000


def tone(seconds: float, freq: float = 220.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def check_cover(spans, n, max_seconds):
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))
    assert all(0 < e - s <= max_seconds * SR for s, e in spans)


@pytest.mark.parametrize("noise", [0.0, 1e-3])
def test_cuts_land_in_silences(noise):
    rng = np.random.default_rng(1)
    pieces, silences, pos = [], [], 0
    for seconds in rng.uniform(4, 9, size=10):
        pieces.append(tone(seconds, freq=rng.uniform(120, 400)))
        pos += len(pieces[-1])
        gap = int(rng.uniform(0.3, 0.7) * SR)
        silences.append((pos, pos + gap))
        pieces.append(np.zeros(gap, np.float32))
        pos += gap
    x = np.concatenate(pieces) + (noise * rng.standard_normal(pos)).astype(np.float32)
    spans = split_audio_at_silences(x, SR, max_seconds=20.0)
    check_cover(spans, len(x), 20.0)
    assert len(spans) >= 4
    for _, cut in spans[:-1]:
        assert any(a < cut < b for a, b in silences), cut


def test_longest_silence_in_window_wins():
    x = np.concatenate([tone(12), np.zeros(int(0.3 * SR), np.float32), tone(3),
                        np.zeros(int(0.9 * SR), np.float32), tone(2), np.zeros(int(0.25 * SR), np.float32),
                        tone(10)])
    (_, cut), _ = split_audio_at_silences(x, SR, max_seconds=20.0)
    start = int((12 + 0.3 + 3) * SR)
    assert start < cut < start + int(0.9 * SR)
    assert abs(cut - (start + int(0.45 * SR))) <= SR // 50  # the middle of it


def test_short_pauses_are_not_silences_and_no_silence_cuts_at_quietest_frame():
    x = tone(60, amp=0.5) * (1 + 0.2 * np.sin(np.arange(60 * SR) / SR * 2 * np.pi * 0.3)).astype(np.float32)
    dip = int(17.5 * SR)
    x[dip:dip + int(0.1 * SR)] *= 0.05  # a 100 ms dip: quieter, but shorter than min_silence_s
    spans = split_audio_at_silences(x, SR, max_seconds=25.0, min_silence_s=0.2)
    check_cover(spans, len(x), 25.0)
    assert dip <= spans[0][1] <= dip + int(0.1 * SR)
    noise = np.random.default_rng(0).standard_normal(100 * SR).astype(np.float32) * 0.1
    spans = split_audio_at_silences(noise, SR, max_seconds=25.0)
    check_cover(spans, len(noise), 25.0)
    assert len(spans) == 4  # the fewest parts when no silence offers a better cut


def test_audio_split_edges():
    assert split_audio_at_silences(np.zeros(0, np.float32), SR) == []
    assert split_audio_at_silences(tone(3), SR) == [(0, 3 * SR)]
    silence = np.zeros(60 * SR, np.float32)
    check_cover(split_audio_at_silences(silence, SR, max_seconds=25.0), len(silence), 25.0)
    odd = tone(61.003)
    check_cover(split_audio_at_silences(odd, SR, max_seconds=7.3), len(odd), 7.3)
    with pytest.raises(AudioError):
        split_audio_at_silences(np.zeros((2, SR)), SR)
    with pytest.raises(AudioError):
        split_audio_at_silences(np.full(40 * SR, np.nan, np.float32), SR)
    with pytest.raises(ValidationError):
        split_audio_at_silences(tone(3), SR, max_seconds=0.01)


@settings(max_examples=60, deadline=None, database=None)
@given(sr=st.sampled_from([1000, 8000, 22050]), seconds=st.floats(0.0, 200.0), max_s=st.floats(0.05, 30.0),
       seed=st.integers(0, 2**16), gaps=st.integers(0, 12))
def test_split_audio_properties(sr, seconds, max_s, seed, gaps):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(int(seconds * sr)) * rng.uniform(0.01, 1.0)).astype(np.float32)
    for _ in range(gaps):  # silences of random length at random places
        a = int(rng.integers(0, max(1, len(x))))
        x[a:a + int(rng.uniform(0.05, 2.0) * sr)] = 0.0
    spans = split_audio_at_silences(x, sr, max_seconds=max_s)
    if len(x) == 0:
        assert spans == []
        return
    assert spans[0][0] == 0 and spans[-1][1] == len(x)
    assert all(a == b for (_, a), (b, _) in zip(spans, spans[1:]))
    assert all(0 < e - s <= int(max_s * sr) for s, e in spans)


# --- joins ----------------------------------------------------------------------------------------------
def test_join_pause_is_exact_and_edges_untouched():
    a, b, c = tone(1.0) + 0.1, tone(0.5, 330) + 0.1, tone(0.7, 150) + 0.1
    out = join_segments([a, b, np.zeros(0, np.float32), c], SR, pause_s=0.25, crossfade_s=0.01)
    gap = int(0.25 * SR)
    assert len(out) == len(a) + len(b) + len(c) + 2 * gap and out.dtype == np.float32
    assert not out[len(a):len(a) + gap].any()
    assert not out[len(a) + gap + len(b):len(a) + 2 * gap + len(b)].any()
    assert out[len(a) - 1] != 0 and out[len(a) + gap] != 0  # the pause is exactly the zeros
    fade = int(0.01 * SR)
    np.testing.assert_array_equal(out[:len(a) - fade], a[:-fade])
    np.testing.assert_array_equal(out[-(len(c) - fade):], c[fade:])


@pytest.mark.parametrize("pause_s", [0.0, 0.2])
def test_join_has_no_click(pause_s):
    # parts that stop and start at full amplitude: butted together they would jump by about 0.9
    a = tone(0.5 + 1 / 880, 220, 0.9)  # ends near a peak
    b = -np.cos(2 * np.pi * 97 * np.arange(SR // 3) / SR).astype(np.float32) * 0.9  # starts at -0.9
    assert max_discontinuity(np.concatenate([a, b])) > 1.5
    fade = int(0.01 * SR)
    out = join_segments([a, b, a], SR, pause_s=pause_s, crossfade_s=0.01)
    own = max(max_discontinuity(a), max_discontinuity(b))
    assert max_discontinuity(out) <= own + 0.9 * np.pi / fade + 1e-6


def test_iter_join_equals_join_and_is_incremental():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal(int(n)).astype(np.float32) * 0.3 for n in rng.integers(1, 4000, size=8)]
    pulled = []

    def source():
        for p in parts:
            pulled.append(len(p))
            yield p

    for pause in (0.0, 0.1):
        pulled.clear()
        it = iter_join(source(), SR, pause_s=pause, crossfade_s=0.01)
        first = next(it)
        assert len(pulled) == 1 and len(first) > 0  # audio comes out before the other parts are made
        chunks = [first, *it]
        whole = join_segments(parts, SR, pause_s=pause, crossfade_s=0.01)
        np.testing.assert_array_equal(np.concatenate(chunks), whole)
    assert len(join_segments([], SR)) == 0


def test_crossfade_concat():
    x = tone(0.5, 220)
    a, b = x[:5000], x[5000 - 300:]
    assert_close_rel(crossfade_concat(a, b, 300, curve="gain"), x)
    rng = np.random.default_rng(0)
    n1, n2 = rng.standard_normal(40000).astype(np.float32), rng.standard_normal(40000).astype(np.float32)
    mixed = crossfade_concat(n1, n2, 20000)[20000:40000]
    assert abs(np.sqrt(np.mean(mixed ** 2)) - 1.0) < 0.05  # equal power: no loudness dip
    assert len(crossfade_concat(a, b, 0)) == len(a) + len(b)
    with pytest.raises(ValidationError):
        crossfade_concat(a, b[:10], 20)
    assert max_discontinuity(np.array([0.0, 1.0, 0.5])) == 1.0 and max_discontinuity(np.zeros(1)) == 0.0
