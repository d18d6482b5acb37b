"""Instructions in plain words → an ordered chain of edits (deterministic; English and Chinese).

"speak cheerfully", "whisper it", "a bit faster", "very sad, then slower", "用悲伤的语气" all map onto
the upstream edit options (editx.lm.prompts: 15 emotions, 33 styles, 4 speeds, paralinguistic tags)
through the phrase table in editx.pipeline.phrasings. The text is cut into clauses (commas, "and",
"then", 然后, …); each phrase found becomes one edit, in the order the words come. Intensity words
just before a phrase set how strongly it is applied: "slightly"/"a bit"/稍微 → 1 round, "very"/非常
→ 2, "extremely"/极其 → 3 (the upstream UI's iterated edits); for speed, a strong word picks "more
faster"/"more slower". The old forms still work: "type:value" ("emotion:happy") and a bare value.
Nothing recognised → InstructionError listing the closest phrasings.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from editx.errors import ValidationError
from editx.lm.prompts import EDIT_OPTIONS, canonical_edit_type
from editx.pipeline.phrasings import EN_INTENSITY, PHRASES, ZH_INTENSITY, Phrase
from editx.pipeline.types import Edit

MAX_INSTRUCTION_CHARS = 4096
_CLAUSE = re.compile(r"[,;.!?，；。！？、\n]+|\b(?:and then|and|then|after that|also|plus)\b|然后|接着|并且|同时")
_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*|[\u4e00-\u9fff]")
_CJK = re.compile(r"[\u4e00-\u9fff]")
_START_WORDS = ("at the start", "at the beginning", "first", "before", "开头", "开始", "先")


class InstructionError(ValidationError):
    """No edit could be read from an instruction."""


@dataclass(frozen=True)
class MappedEdit:
    """One edit read from the words `phrase`; `tag`/`at_start` place a paralinguistic sound."""

    edit_type: str
    edit_info: str | None
    iterations: int
    phrase: str
    tag: str | None = None
    at_start: bool = False

    def to_edit(self, text: str) -> Edit:
        """The Edit for speech of `text` (a paralinguistic tag goes in at the start or the end)."""
        new_text = None
        if self.tag:
            body = text.strip()
            new_text = f"{self.tag}{body}" if self.at_start else f"{body}{self.tag}"
        return Edit(self.edit_type, self.edit_info, self.iterations, new_text)

    def describe(self) -> str:
        what = self.tag or (f"{self.edit_type}:{self.edit_info}" if self.edit_info else self.edit_type)
        return f"{what}×{self.iterations}" if self.iterations > 1 else what


def parse_instructions(text: str | None) -> tuple[MappedEdit, ...]:
    """Free text → the edits it asks for, in order; () for empty text. Raises InstructionError."""
    if text is None or not text.strip():
        return ()
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InstructionError(f"instructions are {len(text)} characters; the limit is {MAX_INSTRUCTION_CHARS}")
    legacy = _legacy_form(text.strip())
    if legacy is not None:
        return (legacy,)
    norm = text.lower().replace("’", "'")
    found: list[MappedEdit] = []
    for clause in _CLAUSE.split(norm):
        if clause and clause.strip():
            found += _clause_edits(clause.strip())
    if not found:
        raise InstructionError(f"instructions {text.strip()[:80]!r} name no edit editx knows; closest: "
                               f"{', '.join(repr(s) for s in suggestions(norm))}. "
                               "Every phrasing: GET /v1/edits (key 'instructions')")
    return tuple(_merge(found))


def to_edits(mapped: tuple[MappedEdit, ...], text: str) -> tuple[Edit, ...]:
    return tuple(m.to_edit(text) for m in mapped)


def suggestions(text: str, n: int = 5) -> list[str]:
    """The phrasings closest to `text` (by its words), for error messages."""
    keys = sorted({p.words for p in PHRASES})
    words = [w for w in _WORD.findall(text.lower()) if len(w) > 1 or _CJK.match(w)]
    scored: dict[str, float] = {}
    for w in words + [text.strip().lower()]:
        for k in difflib.get_close_matches(w, keys, n=n, cutoff=0.5):
            scored[k] = max(scored.get(k, 0.0), difflib.SequenceMatcher(None, w, k).ratio())
    best = sorted(scored, key=lambda k: (-scored[k], k))[:n]
    return best or ["cheerful", "sad", "whisper", "a bit faster", "用悲伤的语气"]


def phrasebook() -> dict:
    """What GET /v1/edits shows under 'instructions': every phrasing per edit, and the intensity words."""
    book: dict[str, dict[str, list[str]]] = {}
    for p in PHRASES:
        key = p.tag or p.info or "(none)"
        book.setdefault(p.edit_type, {}).setdefault(key, []).append(p.words)
    return {"phrasings": book,
            "intensity": {"1 round": [w for w, n in EN_INTENSITY + ZH_INTENSITY if n == 1],
                          "2 rounds": [w for w, n in EN_INTENSITY + ZH_INTENSITY if n == 2],
                          "3 rounds": [w for w, n in EN_INTENSITY + ZH_INTENSITY if n == 3]},
            "examples": ["speak cheerfully", "whisper it", "a bit faster", "very sad, then slower",
                         "sigh at the end", "用悲伤的语气", "开心一点，然后慢一点", "emotion:happy"]}


# ------------------------------------------------------------------------------------------------------


def _legacy_form(text: str) -> MappedEdit | None:
    """'type:value' (or 'type' for denoise/vad) and a bare option value: the forms before plain words."""
    if ":" in text and " " not in text.split(":", 1)[0].strip():
        kind, value = (p.strip() for p in text.split(":", 1))
        try:
            kind = canonical_edit_type(kind)
        except ValidationError:
            return None
        return MappedEdit(kind, value.lower() or None, 1, text)
    low = text.lower()
    if low in ("denoise", "vad"):
        return MappedEdit(low, None, 1, text)
    for kind in ("emotion", "style", "speed"):
        if low in EDIT_OPTIONS[kind]:
            return MappedEdit(kind, low, 1, text)
    return None


def _clause_edits(clause: str) -> list[MappedEdit]:
    """Every phrase in one clause (longest match first, no overlaps), in the order they appear."""
    taken = [False] * len(clause)
    hits: list[tuple[int, int, Phrase]] = []
    for p in PHRASES:  # sorted longest first
        for m in p.pattern.finditer(clause):
            a, b = m.span()
            if not any(taken[a:b]):
                taken[a:b] = [True] * (b - a)
                hits.append((a, b, p))
    hits.sort(key=lambda h: h[0])
    at_start = any(w in clause for w in _START_WORDS)
    out = []
    for a, _b, p in hits:
        strength = _intensity(clause[:a])
        info = p.info
        if p.edit_type == "speed" and strength >= 2 and not info.startswith("more "):
            info = "more " + info
        iterations = 1 if p.edit_type in ("speed", "paralinguistic", "denoise", "vad") else max(1, strength)
        out.append(MappedEdit(p.edit_type, info, iterations, p.words, p.tag, at_start and p.tag is not None))
    return out


def _intensity(before: str) -> int:
    """Rounds asked for by the intensity word just before a phrase (1 when none)."""
    tail = before[-14:]
    for word, n in ZH_INTENSITY:
        if word in tail[-4:]:
            return n
    words = _WORD.findall(tail)[-3:]
    joined = " ".join(words)
    for word, n in EN_INTENSITY:  # longest first
        if re.search(rf"\b{re.escape(word)}$", joined) or (word in words[-2:] and " " not in word):
            return n
    return 1


def _merge(found: list[MappedEdit]) -> list[MappedEdit]:
    """One edit per (type, value) repeated in a row; the strongest intensity wins."""
    out: list[MappedEdit] = []
    for m in found:
        prev = out[-1] if out else None
        if prev and (prev.edit_type, prev.edit_info, prev.tag) == (m.edit_type, m.edit_info, m.tag):
            if m.iterations > prev.iterations:
                out[-1] = m
            continue
        out.append(m)
    return out
