"""Long-form helpers: split long texts into sentences, long clips at silences, and join audio parts.

All functions are pure. Text splitting works on the whitespace-normalised text and returns pieces of
it: every segment is a contiguous substring of that text (plus a repeated leading dialect tag), so
nothing is dropped, added or reordered. Audio functions take mono float32 numpy arrays.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from editx.errors import AudioError, ValidationError
from editx.lm.prompts import LANGUAGE_TAGS

log = logging.getLogger(__name__)

# --- text ---------------------------------------------------------------------------------------------
# Break strengths: a cut at a stronger break is preferred; EDGE is the start/end of the text.
WORD, CLAUSE, SENTENCE, PARAGRAPH, EDGE = 1, 2, 3, 4, 5
# Packing costs (see _pack): one per segment dominates, so the fewest segments always win; then a
# cut at a weak break, a segment under min_chars, and uneven lengths cost a little.
CUT_COST = {WORD: 0.6, CLAUSE: 0.3, SENTENCE: 0.05, PARAGRAPH: 0.0, EDGE: 0.0}
SHORT_COST = 0.5  # times the fraction of min_chars a short segment lacks
BALANCE_COST = 0.1  # times (length / max)^2; small enough never to add a segment
MAX_UNITS_PER_SEGMENT = 256  # bounds the packing search on pathological inputs (e.g. "a,a,a,...")
CJK_LANGS = ("zh", "ja", "ko", "yue")

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
_LATIN_WORD_END = re.compile(r"(?<![A-Za-z.])[A-Za-z][A-Za-z.]*$")  # "Dr", "e.g", "U.S" before a "."
_WS = re.compile(r"\s+")
_DIALECT = re.compile("(?:" + "|".join(re.escape(t) for t in LANGUAGE_TAGS) + ") ?")
# A "." after these (lower-cased, without their final dot) never ends a sentence: titles before names,
# Latin abbreviations, and labels before numbers. Other abbreviations are caught by the next word's case.
ABBREVIATIONS = frozenset("mr mrs ms dr prof st mt rev gen col capt lt sgt hon fr sen rep gov pres messrs mme "
                          "e.g i.e cf vs viz approx ca fig figs no nos vol vols pp ch sec art eq ref dept est"
                          .split())


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
        if word.lower() in ABBREVIATIONS or (len(word) == 1 and "A" <= word <= "Z" and word != "I"):
            return 0  # "Dr. Smith", "e.g. this", "J. K. Rowling" (the space is still a word break)
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
        nxt = body[b] if b < len(body) else ""
        if nxt and (nxt == " " or _CJK_CHAR.match(nxt) or not m.group().isascii()):
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


def _balanced_word_split(body: str, s: int, e: int, budget: int) -> list[int]:
    """Cut positions splitting body[s:e] at word breaks into pieces <= budget of similar length."""
    words = _word_breaks(body, s, e)
    masked = _TAG.sub(lambda m: "\0" * len(m.group()), body[s:e])  # tags are not speech
    spoken = [m.start() + s for m in _SPEAKABLE.finditer(masked)] or [s]
    cuts, cur, last = [], s, spoken[-1]
    while _length(body, cur, e) > budget:
        first = spoken[min(bisect.bisect_left(spoken, cur), len(spoken) - 1)]
        lo = bisect.bisect_right(words, cur)
        fit = [c for c in words[lo:bisect.bisect_right(words, cur + budget + 2)] if _length(body, cur, c) <= budget]
        # each piece should say something; if that cannot be (a long run of punctuation), fit anyway
        near = [c for c in fit if first < c <= last] or fit or words[lo:lo + 1]  # else: oversized word
        if not near:
            break
        target = cur + (e - cur) / math.ceil(_length(body, cur, e) / budget)
        cur = min(near, key=lambda c: abs(c - target))
        cuts.append(cur)
    return cuts


def _units(body: str, budget: int, english: bool, paragraphs: Iterable[int]) -> list[tuple[int, int, int]]:
    """Sentences, or for sentences over budget their clauses, or for clauses over budget word pieces."""
    breaks = _punctuation_breaks(body, english)
    for pos in paragraphs:
        breaks[pos] = PARAGRAPH
    for m in _PROTECTED.finditer(body):
        for pos in range(m.start() + 1, m.end()):
            breaks.pop(pos, None)
    cuts = sorted(breaks.items())
    positions = [p for p, _ in cuts]
    units = []
    for s, e, level in _merge_unspeakable(_spans([c for c in cuts if c[1] >= SENTENCE], 0, len(body), EDGE), body):
        if _length(body, s, e) <= budget:
            units.append((s, e, level))
            continue
        inner = cuts[bisect.bisect_right(positions, s):bisect.bisect_left(positions, e)]
        for cs, ce, clevel in _merge_unspeakable(_spans(inner, s, e, level), body):
            word_cuts = _balanced_word_split(body, cs, ce, budget) if _length(body, cs, ce) > budget else []
            units += _spans([(c, WORD) for c in word_cuts], cs, ce, clevel)
    return units


def _pack(body: str, units: list[tuple[int, int, int]], budget: int, min_chars: int) -> list[tuple[int, int]]:
    """Group consecutive units into segments <= budget with the least cost (dynamic programming)."""
    m = len(units)
    best = [0.0] + [math.inf] * m
    back = [0] * (m + 1)
    for j in range(1, m + 1):
        end, level = units[j - 1][1], units[j - 1][2]
        for i in range(j - 1, max(-1, j - 1 - MAX_UNITS_PER_SEGMENT), -1):
            n = _length(body, units[i][0], end)
            if n > budget and i < j - 1:
                break
            cost = (best[i] + 1.0 + CUT_COST[level] + SHORT_COST * max(0, min_chars - n) / max(min_chars, 1)
                    + BALANCE_COST * (n / budget) ** 2)
            if cost < best[j]:
                best[j], back[j] = cost, i
    segments, j = [], m
    while j > 0:
        segments.append((units[back[j]][0], units[j - 1][1]))
        j = back[j]
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
    ("Dr.", "e.g."), an initial, inside a number or before a lower-case word ends no sentence. The
    fewest segments are used; among those, cuts at stronger breaks, segments of at least `min_chars`
    and even lengths are preferred. A leading dialect tag ("[Sichuanese]") is repeated on every segment.

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


def split_transcript_for_spans(text: str, spans: Sequence[tuple[int, int]], sample_rate: int) -> list[str]:
    """Divide a transcript over consecutive audio spans in proportion to their durations (best effort).

    The text is cut where the spoken share of the text (letters and digits count 1, a CJK character
    counts `CJK_SPOKEN_WEIGHT`, as it is a whole syllable) matches each span's share of the duration;
    within `SNAP_TOLERANCE` of that point a stronger break (sentence, then clause punctuation) wins,
    since clips are usually cut at pauses. Cuts fall between words (or CJK characters) only. The
    result has one string per span (possibly "" for a span with no words); joined with spaces it gives
    back the normalised text. Speaking rate is assumed constant, so expect a word or two of error.
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


# --- audio --------------------------------------------------------------------------------------------
FRAMES_PER_SECOND = 50  # 20 ms energy frames
SILENCE_FLOOR_DB = -100.0  # RMS of digital silence is clamped here
SILENCE_ABSOLUTE_DB = -50.0  # a frame is silent under this level or within ...
SILENCE_ABOVE_NOISE_DB = 10.0  # ... this of the noise floor, whichever is higher, ...
SILENCE_BELOW_PEAK_DB = 20.0  # ... provided that is at least this far under the loudest frame
NOISE_PERCENTILE = 10  # the noise floor: this percentile of frame levels
MIN_PART_FRACTION = 0.5  # cuts are searched first in the last half of the allowed window
ENERGY_BLOCK = 1 << 20  # samples per block when computing frame energies (bounded memory)
CJK_SPOKEN_WEIGHT = 3.0  # a CJK character takes about as long to say as three Latin letters
SNAP_TOLERANCE = 0.15  # fraction of the shortest span's text a transcript cut may move to a break


def frame_levels_db(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Short-time RMS level in dB of consecutive 20 ms frames (the last, partial frame included)."""
    frame = max(1, sample_rate // FRAMES_PER_SECOND)
    n = len(samples)
    out = np.empty(math.ceil(n / frame), dtype=np.float64)
    step = max(frame, ENERGY_BLOCK // frame * frame)
    for a in range(0, n, step):
        block = np.asarray(samples[a:a + step], dtype=np.float64)
        pad = (-len(block)) % frame
        counts = np.full(math.ceil(len(block) / frame), frame, dtype=np.float64)
        if pad:
            counts[-1] = frame - pad
            block = np.concatenate([block, np.zeros(pad)])
        power = np.square(block).reshape(-1, frame).sum(axis=1) / counts
        out[a // frame:a // frame + len(power)] = 10 * np.log10(np.maximum(power, 10 ** (SILENCE_FLOOR_DB / 10)))
    return out


def _check_clip(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    x = np.asarray(samples)
    if x.ndim != 1:
        raise AudioError(f"expected mono audio as a 1-D array, got shape {x.shape}; downmix it first")
    if sample_rate <= 0:
        raise AudioError(f"sample_rate must be positive, got {sample_rate}")
    return x


def split_audio_at_silences(samples: np.ndarray, sample_rate: int, *, max_seconds: float = 25.0,
                            min_silence_s: float = 0.2) -> list[tuple[int, int]]:
    """Cut a long clip into consecutive (start, end) sample spans of at most `max_seconds` each.

    Each cut goes in the middle of a silence (a run of 20 ms frames at least `min_silence_s` long whose
    level is near the noise floor and well under the loudest frame). From the start of each part, the
    longest silence (then the quietest) is taken from the first window that has one: the part of the
    allowed window that keeps the fewest parts possible and the last half, then the last half, then
    all of it. With no silence, the cut goes at the quietest frame of the first window. The spans cover
    the clip exactly, in order, without gaps or overlaps; a clip no longer than `max_seconds` is one.
    """
    x = _check_clip(samples, sample_rate)
    n = len(x)
    frame = max(1, sample_rate // FRAMES_PER_SECOND)
    limit = int(max_seconds * sample_rate)
    if limit < 2 * frame:
        raise ValidationError(f"max_seconds={max_seconds} is too short; use at least {2 / FRAMES_PER_SECOND} s")
    if n <= limit:
        return [(0, n)] if n else []
    db = frame_levels_db(x, sample_rate)
    noise = float(np.percentile(db, NOISE_PERCENTILE))
    threshold = min(max(noise + SILENCE_ABOVE_NOISE_DB, SILENCE_ABSOLUTE_DB), db.max() - SILENCE_BELOW_PEAK_DB)
    silent = db < threshold
    min_run = max(1, math.ceil(min_silence_s * FRAMES_PER_SECOND - 1e-9))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], silent.astype(np.int8), [0]])))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_run]  # frame ranges
    spans, start = [], 0
    while n - start > limit:
        cut = _choose_cut(db, runs, start, n, limit, frame, min_run)
        spans.append((start, cut))
        start = cut
    spans.append((start, n))
    return spans


def _choose_cut(db: np.ndarray, runs: list[tuple[int, int]], start: int, n: int, limit: int, frame: int,
                min_run: int) -> int:
    """The sample to cut at in (start, start + limit]: see split_audio_at_silences."""
    end = start + limit
    tight = n - (math.ceil((n - start) / limit) - 1) * limit  # a cut before this adds a part
    late = max(start + int(limit * MIN_PART_FRACTION), tight)
    for lo in (late, start + int(limit * MIN_PART_FRACTION), start + frame):
        f_lo, f_hi = math.ceil(lo / frame), end // frame  # frames wholly inside [lo, end)
        best = None
        for a, b in runs:
            a, b = max(a, f_lo), min(b, f_hi)
            if b - a < min_run:
                continue
            key = (b - a, -float(db[a:b].mean()))
            if best is None or key > best[0]:
                best = (key, (a + b) * frame // 2)
        if best is not None:
            return best[1]
    f_lo, f_hi = math.ceil(late / frame), end // frame
    if f_hi <= f_lo:
        return end
    f = f_lo + int(np.argmin(db[f_lo:f_hi]))  # ties: the earliest
    return min(f * frame + frame // 2, end)


# --- joins --------------------------------------------------------------------------------------------
def max_discontinuity(x: np.ndarray) -> float:
    """Largest absolute difference between consecutive samples (0.0 for fewer than two)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.abs(np.diff(x)).max()) if len(x) > 1 else 0.0


def _ramp(n: int) -> np.ndarray:
    """Raised-cosine fade-in of n samples, from just above 0 to just below 1."""
    return (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)


def crossfade_concat(a: np.ndarray, b: np.ndarray, overlap: int, *, curve: str = "power") -> np.ndarray:
    """Concatenate a and b, mixing a's last `overlap` samples into b's first ones.

    curve="power" (equal power: cos/sin gains) keeps the loudness of unrelated signals steady;
    curve="gain" (equal gain: gains sum to 1) is the right one when both overlaps hold the same audio,
    as in chunk overlaps of a streaming decoder. The result has len(a) + len(b) - overlap samples.
    """
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    if curve not in ("power", "gain"):
        raise ValidationError(f"unknown crossfade curve {curve!r}; use 'power' or 'gain'")
    if not 0 <= overlap <= min(len(a), len(b)):
        raise ValidationError(f"overlap {overlap} must be between 0 and the shorter input ({min(len(a), len(b))})")
    if overlap == 0:
        return np.concatenate([a, b])
    t = (np.arange(overlap) + 0.5) / overlap
    fade_in = np.sin(0.5 * np.pi * t) if curve == "power" else t
    fade_out = np.cos(0.5 * np.pi * t) if curve == "power" else 1.0 - t
    mixed = (a[-overlap:] * fade_out + b[:overlap] * fade_in).astype(np.float32)
    return np.concatenate([a[:-overlap], mixed, b[overlap:]])


def iter_join(parts: Iterable[np.ndarray], sample_rate: int, *, pause_s: float = 0.25,
              crossfade_s: float = 0.01) -> Iterator[np.ndarray]:
    """Join audio parts as they arrive, yielding the joined audio piece by piece (see join_segments).

    Only the last `crossfade_s` of the latest part is held back, so memory stays bounded by one part.
    """
    if sample_rate <= 0 or pause_s < 0 or crossfade_s < 0:
        raise ValidationError(f"need sample_rate > 0, pause_s >= 0, crossfade_s >= 0 "
                              f"(got {sample_rate}, {pause_s}, {crossfade_s})")
    fade, gap = round(crossfade_s * sample_rate), round(pause_s * sample_rate)
    tail: np.ndarray | None = None  # the held-back end of the previous part
    for part in parts:
        x = _check_clip(part, sample_rate).astype(np.float32, copy=False)
        if len(x) == 0:
            continue
        if not np.isfinite(x).all():
            raise AudioError("an audio part to join has NaN or infinite samples")
        f = min(fade, len(x) // 2)
        body = x[:len(x) - f]
        if tail is not None:
            if gap:
                body = body.copy()
                body[:f] *= _ramp(f)
                yield np.concatenate([tail * _ramp(len(tail))[::-1], np.zeros(gap, np.float32)])
            else:
                body = crossfade_concat(tail, body, min(len(tail), f))
        yield body
        tail = x[len(x) - f:]
    if tail is not None and len(tail):
        yield tail


def join_segments(parts: list[np.ndarray], sample_rate: int, *, pause_s: float = 0.25,
                  crossfade_s: float = 0.01) -> np.ndarray:
    """Join synthesized segments with a pause of exactly round(pause_s * sample_rate) zeros between them.

    Each side of a pause fades over `crossfade_s` (raised cosine; at most half the part) so no join
    clicks; the first part's start and the last part's end are left as they are. With pause_s=0 the
    parts are equal-power crossfaded over `crossfade_s` instead. Empty parts are skipped.
    """
    return np.concatenate([np.zeros(0, np.float32), *iter_join(parts, sample_rate, pause_s=pause_s,
                                                                  crossfade_s=crossfade_s)])
