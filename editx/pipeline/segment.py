"""Long-form text: split long texts into sentences for synthesis, and transcripts over clip parts.

All functions are pure. Splitting works on the whitespace-normalised text and returns pieces of it:
every segment is a contiguous substring of that text (plus a repeated leading dialect tag), so nothing
is dropped, added or reordered. The audio side of long-form (cutting long clips at silences, joining
synthesized parts) lives in editx.pipeline.splice and is re-exported here.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Iterable, Sequence

import numpy as np

from editx.errors import ValidationError
from editx.lm.prompts import LANGUAGE_TAGS
from editx.pipeline.splice import (
    crossfade_concat,
    frame_levels_db,
    iter_join,
    join_segments,
    max_discontinuity,
    split_audio_at_silences,
)

__all__ = ["split_text", "text_budget", "normalize_text", "split_transcript_for_spans", "split_audio_at_silences",
           "frame_levels_db", "join_segments", "iter_join", "crossfade_concat", "max_discontinuity"]

log = logging.getLogger(__name__)

# Break strengths: a cut at a stronger break is preferred; EDGE is the start/end of the text.
WORD, CLAUSE, SENTENCE, PARAGRAPH, EDGE = 1, 2, 3, 4, 5
# Packing costs (see _pack), per segment 1. A cut between words costs more than a segment plus a
# clause cut, so an over-long sentence is cut at its clauses even if a cut between words would save
# a segment, unless that also saves a short fragment. Merging a short fragment into a neighbour that
# has room always lowers the cost.
CUT_COST = {WORD: 2.0, CLAUSE: 0.3, SENTENCE: 0.05, PARAGRAPH: 0.0, EDGE: 0.0}
SHORT_COST = 1.5  # times the fraction of min_chars a short segment lacks
BALANCE_COST = 0.1  # times (length / max)^2: even lengths among equal choices
UNSPOKEN_COST = 3.0  # a segment with nothing to say (a lone tag, "……"), when it cannot be avoided
CJK_LANGS = ("zh", "ja", "ko", "yue")
CJK_SPOKEN_WEIGHT = 3.0  # transcripts: a CJK character takes about as long to say as three Latin letters
SNAP_TOLERANCE = 0.15  # fraction of the shortest span's text a transcript cut may move to a break

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af\U00020000-\U0002fa1f"
_CJK_CHAR = re.compile(f"[{_CJK}]")
_TERMINALS = re.compile(r"[.!?\u3002\uff01\uff1f\uff1b\uff61\uff0e\u2026]+")  # . ! ? 。！？；｡．…
_CJK_TERMINALS = set("\u3002\uff01\uff1f\uff1b\uff61\uff0e")  # end a sentence whatever follows
_CLAUSES = re.compile(r"[,;:\uff0c\u3001\uff1a\u2014]+")  # , ; : ，、：—
_CLOSERS = set("\"')]}\u201d\u2019\u300d\u300f\uff09\u3011\u300b\u3009\u00bb\uff3d\uff5d")
_OPENERS = set("\"'([{\u201c\u2018\u300c\u300e\uff08\u3010\u300a\u3008\u00ab\uff3b\uff5b")
_TAG = re.compile(r"\[[^\[\]\s]{1,40}\]")  # [Laughter], [Surprise-oh], [Sichuanese]
_PROTECTED = re.compile(
    r"(?:[A-Za-z][A-Za-z0-9+.-]*://|www\.)[!-~]*[A-Za-z0-9/#=_-]"  # URLs (ASCII; trailing punctuation out)
    r"|[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+"  # e-mail addresses
    r"|\[[^\[\]\s]{1,40}\]")  # tags
_SPEAKABLE = re.compile(r"\w")
_LATIN_WORD_END = re.compile(r"(?<![A-Za-z0-9.])[A-Za-z][A-Za-z.]*$")  # "Dr", "e.g", "U.S" before a "."
_WS = re.compile(r"\s+")
_DIALECT = re.compile("(?:" + "|".join(re.escape(t) for t in LANGUAGE_TAGS) + ") ?")
# A "." after these (lower-cased, without their final dot) ends no sentence: titles before names and
# Latin abbreviations; labels end none before a number ("No. 5", "Fig. 2"). Other abbreviations are
# caught by the case of the next word.
ABBREVIATIONS = frozenset(("mr", "mrs", "ms", "dr", "prof", "st", "mt", "rev", "gen", "col", "capt", "lt",
                           "sgt", "hon", "fr", "sen", "gov", "messrs", "mme", "e.g", "i.e", "cf", "vs",
                           "viz", "approx", "ca"))
NUMBER_LABELS = frozenset(("no", "nos", "vol", "vols", "p", "pp", "ch", "sec", "art", "eq", "fig", "figs",
                           "ref", "op", "nr"))


def _level_after_terminal(body: str, a: int, b: int, english: bool) -> int:
    """Break strength of a terminal run body[a:b] whose cut is at b (after closers/tags); 0 = none."""
    run, n = body[a:b], len(body)
    nxt = body[b] if b < n else ""
    if any(c in _CJK_TERMINALS for c in run):
        return SENTENCE
    if nxt and nxt != " ":
        return SENTENCE if _CJK_CHAR.match(nxt) else 0  # "3.14", "example.com", "Yahoo!Answers"
    if not nxt or not english:
        return SENTENCE
    i = b + 1  # the first letter of the next word, past openers and tags
    while i < n:
        tag = _TAG.match(body, i)
        if tag:
            i = tag.end() + (tag.end() < n and body[tag.end()] == " ")
        elif body[i] in _OPENERS:
            i += 1
        else:
            break
    lower = i < n and body[i].islower()
    if "." in run and not ("?" in run or "!" in run) and body[a:a + 3] != "..." and "\u2026" not in run:
        word = m.group() if (m := _LATIN_WORD_END.search(body, max(0, a - 24), a)) else ""
        if (word.lower() in ABBREVIATIONS or (len(word) == 1 and "A" <= word <= "Z" and word != "I")
                or (word.lower() in NUMBER_LABELS and i < n and body[i].isdigit())):
            return 0  # "Dr. Smith", "e.g. this", "J. K. Rowling", "No. 5" (the space is still a word break)
        return 0 if lower else SENTENCE
    return CLAUSE if lower else SENTENCE  # '"Really?" she asked', "Wait... what?"


def _absorb(body: str, b: int) -> int:
    """Move a cut past closing quotes/brackets and tags that stick to the punctuation before it."""
    n = len(body)
    while b < n:
        if body[b] in _CLOSERS:
            b += 1
        elif (tag := _TAG.match(body, b)) is not None:
            b = tag.end()
        else:
            return b
    return b


def _punctuation_breaks(body: str, english: bool) -> dict[int, int]:
    """Cut positions after sentence and clause punctuation -> strength."""
    breaks: dict[int, int] = {}
    for m in _TERMINALS.finditer(body):
        b = _absorb(body, m.end())
        level = _level_after_terminal(body, m.start(), b, english)
        if level and b < len(body):
            breaks[b] = max(level, breaks.get(b, 0))
    for m in _CLAUSES.finditer(body):
        b = _absorb(body, m.end())
        if b < len(body) and not (body[m.start() - 1:m.start()].isdigit() and body[b].isdigit()):  # 1,000 3:30
            breaks[b] = max(CLAUSE, breaks.get(b, 0))
    return breaks


def _word_breaks(body: str, lo: int, hi: int) -> list[int]:
    """Cut positions strictly inside (lo, hi): spaces, and word boundaries touching a CJK character."""
    out = []
    for i in range(lo + 1, hi):
        prev, cur = body[i - 1], body[i]
        if cur == " " or (prev.isalnum() and cur.isalnum() and (_CJK_CHAR.match(prev) or _CJK_CHAR.match(cur))):
            out.append(i)
    return out


def _merge_unspeakable(spans: list[tuple[int, int, int]], body: str) -> list[tuple[int, int, int]]:
    """Glue spans with nothing to say (a lone tag, "……") to the neighbour across their weaker break."""
    out: list[tuple[int, int, int]] = []
    carry = None
    for s, e, level in spans:
        s = carry if carry is not None else s
        carry = None
        if not _SPEAKABLE.search(_TAG.sub("", body[s:e])):
            before = out[-1][2] if out else EDGE
            if out and before <= level:
                out[-1] = (out[-1][0], e, level)
                continue
            if level != EDGE:
                carry = s
                continue
        out.append((s, e, level))
    return out


def _spans(cuts: Sequence[tuple[int, int]], lo: int, hi: int, end_level: int) -> list[tuple[int, int, int]]:
    """(position, level) cuts inside (lo, hi) -> consecutive (start, end, level at end) spans."""
    spans, start = [], lo
    for pos, level in cuts:
        if lo < pos < hi:
            spans.append((start, pos, level))
            start = pos
    spans.append((start, hi, end_level))
    return spans


def _length(body: str, s: int, e: int) -> int:
    """Length of body[s:e] without the single space a cut may leave at either end."""
    return e - s - (body[s] == " ") - (body[e - 1] == " ") if e > s else 0


def _units(body: str, budget: int, english: bool, paragraphs: Iterable[int]) -> list[tuple[int, int, int]]:
    """Sentences, and for sentences over budget their clauses and words: the pieces segments are made of."""
    breaks = _punctuation_breaks(body, english)
    for pos in paragraphs:
        breaks[pos] = PARAGRAPH
    protected = [m.span() for m in _PROTECTED.finditer(body)]
    for a, b in protected:
        for pos in range(a + 1, b):
            breaks.pop(pos, None)
    cuts = sorted(breaks.items())
    positions = [p for p, _ in cuts]
    units = []
    for s, e, level in _merge_unspeakable(_spans([c for c in cuts if c[1] >= SENTENCE], 0, len(body), EDGE), body):
        if _length(body, s, e) <= budget:
            units.append((s, e, level))
            continue
        inner = dict.fromkeys(_word_breaks(body, s, e), WORD)
        for a, b in protected[bisect.bisect_left(protected, (s, 0)):]:  # tags can hold CJK letters
            if a >= e:
                break
            for pos in range(a + 1, min(b, e)):
                inner.pop(pos, None)
        inner.update(cuts[bisect.bisect_right(positions, s):bisect.bisect_left(positions, e)])
        units += _spans(sorted(inner.items()), s, e, level)  # _pack keeps lone tags from standing alone
    return units


def _pack(body: str, units: list[tuple[int, int, int]], budget: int, min_chars: int) -> list[tuple[int, int]]:
    """Group consecutive units into segments <= budget with the least cost (dynamic programming)."""
    m = len(units)
    starts = np.array([s + (body[s] == " ") for s, _, _ in units], dtype=np.int64)  # first character
    ends = np.array([e - (body[e - 1] == " ") for _, e, _ in units], dtype=np.int64)  # after the last one
    # segment = units i..j-1; lengths fall as i rises, so the ones that fit are a suffix from first[j]
    first = np.minimum(np.searchsorted(starts, ends - budget), np.arange(m))
    length = np.arange(budget + 1)
    shape = BALANCE_COST * (length / budget) ** 2 + SHORT_COST * np.maximum(0, min_chars - length) / max(min_chars, 1)
    cut = np.array([1.0 + CUT_COST[level] for _, _, level in units])
    spoken = [bool(_SPEAKABLE.search(_TAG.sub("", body[s:e]))) for s, e, _ in units]
    last_spoken = np.maximum.accumulate(np.where(spoken, np.arange(m), -1))  # last unit with speech <= j
    best = np.zeros(m + 1)
    back = np.zeros(m + 1, dtype=np.int64)
    for j in range(1, m + 1):
        lo = int(first[j - 1])
        n = ends[j - 1] - starts[lo:j]
        cost = (best[lo:j] + shape[np.minimum(n, budget)] + BALANCE_COST * np.maximum(0, n - budget) / budget
                + UNSPOKEN_COST * (np.arange(lo, j) > last_spoken[j - 1]))
        k = int(np.argmin(cost))
        best[j], back[j] = cost[k] + cut[j - 1], lo + k
    segments, j = [], m
    while j > 0:
        segments.append((units[back[j]][0], units[j - 1][1]))
        j = int(back[j])
    return segments[::-1]


def normalize_text(text: str) -> str:
    """The text `split_text` works on: whitespace runs collapsed to one space, none at either end."""
    return _normalize(text)[0]


def _normalize(text: str) -> tuple[str, list[int]]:
    """normalize_text, and the positions of the spaces that stand for blank lines (paragraph breaks)."""
    parts, paragraphs, pos, out_len = [], [], 0, 0
    for m in _WS.finditer(text):
        chunk = text[pos:m.start()]
        parts.append(chunk)
        out_len += len(chunk)
        if out_len and m.end() < len(text):
            if m.group().count("\n") >= 2:
                paragraphs.append(out_len)
            parts.append(" ")
            out_len += 1
        pos = m.end()
    parts.append(text[pos:])
    return "".join(parts), paragraphs


def split_text(text: str, *, max_chars: int = 300, min_chars: int = 40, lang: str | None = None) -> list[str]:
    """Split `text` into segments of at most `max_chars` characters for synthesis one by one.

    Cuts go at sentence ends (English and CJK punctuation, paragraph breaks) where possible, in an
    over-long sentence at clause punctuation, then between words (spaces, or between CJK characters),
    never inside an ASCII word, a URL, an e-mail address or a `[Tag]`. A "." after an abbreviation
    ("Dr.", "e.g."), an initial, inside a number or before a lower-case word ends no sentence. One cost
    picks the cuts (see CUT_COST): few segments, strong breaks, no segment under `min_chars` that could
    join a neighbour, no segment that is only a tag, even lengths; a cut between words is taken only
    where clause cuts cannot do. A leading dialect tag ("[Sichuanese]") is repeated on every segment
    (and counts towards `max_chars`).

    `lang`: None or "en" apply the English "." rules above; a CJK language ("zh", "ja", "ko", "yue")
    treats every ".", "!" or "?" before a space as a sentence end. A word longer than `max_chars` is
    kept whole (that segment is longer). Whitespace runs become one space; the segments, joined with
    the spaces between them, give back the normalised text. Empty text gives [].
    """
    if lang is not None and lang not in ("en", *CJK_LANGS):
        raise ValidationError(f"unknown lang {lang!r}; use None (auto), 'en', or one of {', '.join(CJK_LANGS)}")
    if min_chars < 0 or max_chars < 1 or min_chars > max_chars:
        raise ValidationError(f"need 0 <= min_chars <= max_chars and max_chars >= 1 "
                              f"(got min_chars={min_chars}, max_chars={max_chars})")
    norm, paragraphs = _normalize(text)
    if not norm:
        return []
    prefix = m.group() if (m := _DIALECT.match(norm)) else ""
    body = norm[len(prefix):]
    budget = max_chars - len(prefix)
    if budget < 1:
        raise ValidationError(f"max_chars={max_chars} leaves no room after the dialect tag {prefix.strip()!r}")
    if len(norm) <= max_chars or not body.strip():
        return [norm]
    paragraphs = [p - len(prefix) for p in paragraphs if p > len(prefix)]
    units = _units(body, budget, lang in (None, "en"), paragraphs)
    return [prefix + body[s:e].strip(" ") for s, e in _pack(body, units, budget, min_chars)]


ENGLISH_SEGMENT_CHARS = 250  # about 15 s of speech: well inside what the LM speaks reliably
CJK_SEGMENT_CHARS = 100  # a CJK character is a syllable: about the same duration
CJK_HEAVY = 0.3  # texts with at least this share of CJK characters among letters use the CJK budget


def text_budget(text: str, max_chars: int | None = None) -> tuple[int, str | None]:
    """(max_chars, lang) for `split_text` of a synthesis text: CJK-heavy texts get shorter segments
    and CJK sentence rules; `max_chars` overrides the size."""
    letters = sum(ch.isalpha() for ch in text)
    cjk = len(_CJK_CHAR.findall(text))
    if letters and cjk / letters >= CJK_HEAVY:
        return max_chars or CJK_SEGMENT_CHARS, "zh"
    return max_chars or ENGLISH_SEGMENT_CHARS, None


def split_transcript_for_spans(text: str, spans: Sequence[tuple[int, int]], sample_rate: int) -> list[str]:
    """Divide a transcript over consecutive audio spans in proportion to their durations (best effort).

    The text is cut where the spoken share of the text (letters and digits count 1, a CJK character
    counts `CJK_SPOKEN_WEIGHT`, as it is a whole syllable) matches each span's share of the duration;
    within `SNAP_TOLERANCE` of that point a stronger break (sentence, then clause punctuation) wins,
    since clips are usually cut at pauses. Cuts fall between words (or CJK characters) only. The
    result has one string per span (possibly "" for a span with no words); each character of the
    normalised text is in exactly one of them, in order. Speaking rate is assumed constant, so expect a
    word or two of error; a transcript aligner would do better.
    """
    if sample_rate <= 0:
        raise ValidationError(f"sample_rate must be positive, got {sample_rate}")
    durations = [e - s for s, e in spans]
    if any(d < 0 for d in durations):
        raise ValidationError("spans must be (start, end) pairs with start <= end")
    if not spans:
        return []
    body = normalize_text(text)
    if len(spans) == 1 or not body:
        return [body] + [""] * (len(spans) - 1)
    weights = [CJK_SPOKEN_WEIGHT if _CJK_CHAR.match(c) else float(c.isalnum()) for c in body]
    cum = np.concatenate([[0.0], np.cumsum(weights)])  # cum[i]: spoken weight of body[:i]
    breaks = {p: WORD for p in _word_breaks(body, 0, len(body))}
    for pos, level in _punctuation_breaks(body, english=True).items():
        breaks[pos] = max(level, breaks.get(pos, WORD))
    for m in _PROTECTED.finditer(body):
        for pos in range(m.start() + 1, m.end()):
            breaks.pop(pos, None)
    cands = [0, *sorted(breaks), len(body)]
    breaks[0] = breaks[len(body)] = WORD
    total, fractions = cum[-1], np.cumsum(durations)[:-1] / max(sum(durations), 1)
    tolerance = SNAP_TOLERANCE * total * min(durations) / max(sum(durations), 1)
    cuts, prev = [], 0
    for frac in fractions:
        target = frac * total
        pool = [c for c in cands if c >= prev]
        near = [c for c in pool if abs(cum[c] - target) <= tolerance]
        if near:
            best = max(near, key=lambda c: (breaks[c], -abs(cum[c] - target)))
        else:
            best = min(pool, key=lambda c: abs(cum[c] - target))
        cuts.append(best)
        prev = best
    bounds = [0, *cuts, len(body)]
    return [body[a:b].strip(" ") for a, b in zip(bounds, bounds[1:])]
