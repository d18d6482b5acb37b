"""One text normalisation for every check: words for space-separated scripts, characters for CJK.

Whisper writes numbers as digits, adds punctuation and casing, and marks non-speech as "[Music]"
or "(laughs)"; a request's text may carry editx tags ("[Laughter]", "[Japanese]"). Both sides go
through `units()` so only what was said is compared. Chinese and Japanese have no spaces between
words, so their error rate is counted per character (CER) rather than per word (WER).
"""

from __future__ import annotations

import re
import unicodedata

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))

# Sounds a paralinguistic tag may put in the audio that an ASR can write as a word: an edit that
# adds "[Laughter]" is not penalised for "haha" where the laugh went (only as insertions).
TAG_SOUNDS: dict[str, frozenset[str]] = {
    "[breathing]": frozenset(),
    "[laughter]": frozenset({"ha", "haha", "hahaha", "heh", "hehe"}),
    "[surprise-oh]": frozenset({"oh", "ooh", "o"}),
    "[surprise-ah]": frozenset({"ah", "aah", "a"}),
    "[surprise-wa]": frozenset({"wa", "wah", "wow", "whoa", "woah"}),
    "[confirmation-en]": frozenset({"en", "mm", "mhm", "hmm", "uh", "huh"}),
    "[uhm]": frozenset({"uhm", "um", "umm", "uh", "hmm", "erm"}),
    "[sigh]": frozenset({"sigh", "ah", "oh", "haa"}),
    "[question-ei]": frozenset({"ei", "eh", "hey", "huh"}),
    "[dissatisfaction-hnn]": frozenset({"hnn", "hmm", "hm", "huh", "mm"}),
}
# [Sichuanese] / [Cantonese] / [Japanese] / [Korean] before a text say how to speak it
LANGUAGE_TAG_CODES = {"[sichuanese]": "zh", "[cantonese]": "zh", "[japanese]": "ja", "[korean]": "ko"}

_BRACKETED = re.compile(r"\[[^\]]{0,40}\]|\([^)]{0,40}\)|（[^）]{0,40}）|【[^】]{0,40}】")
_TAG = re.compile(r"\[[^\]]{1,40}\]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_LETTER = re.compile(r"[^\W\d_]")


def number_words(n: int) -> str:
    """Cardinal in words, no 'and' ("1999" → "one thousand nine hundred ninety nine")."""
    if n < 0:
        return "minus " + number_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for value, word in _SCALES:
        if n >= value:
            head, rest = divmod(n, value)
            return f"{number_words(head)} {word}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def is_cjk(text: str) -> bool:
    """True when most letters are Chinese characters or Japanese kana (score those per character)."""
    letters = _LETTER.findall(text)
    if not letters:
        return False
    cjk = sum(1 for ch in letters if _HAN.match(ch) or _KANA.match(ch))
    return cjk * 2 >= len(letters)


def language_of(text: str) -> str:
    """Whisper language code a text is written in, from its script and editx language tag:
    kana → ja, Han → zh, Hangul → ko, anything else → en (pass `language` to say otherwise)."""
    lowered = text.lower()
    for tag, code in LANGUAGE_TAG_CODES.items():
        if tag in lowered:
            return code
    body = _TAG.sub(" ", text)
    if _KANA.search(body):
        return "ja"
    if is_cjk(body):
        return "zh"
    if _HANGUL.search(body):
        return "ko"
    return "en"


def allowed_insertions(text: str) -> frozenset[str]:
    """The words the paralinguistic tags in `text` may add to the audio."""
    out: set[str] = set()
    for tag in _TAG.findall(text):
        out |= TAG_SOUNDS.get(tag.lower(), frozenset())
    return frozenset(out)


def units(text: str, *, cjk: bool | None = None) -> list[str]:
    """The comparable units of `text`: normalised words, or characters for Chinese/Japanese.

    NFKC, lowercase, bracketed annotations and tags dropped, digits spelled out (words only),
    punctuation dropped (apostrophes inside words kept)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = _BRACKETED.sub(" ", text)
    if cjk if cjk is not None else is_cjk(text):
        return [ch for ch in re.sub(r"[^\w]+", "", text) if ch != "_"]
    return normalize_words(text)


def normalize_words(text: str) -> list[str]:
    """Lowercase, digits spelled out, punctuation dropped (apostrophes inside words kept), split on space."""
    text = unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 → 1000
    text = re.sub(r"\d+", lambda m: f" {number_words(int(m.group()))} " if len(m.group()) < 13 else m.group(),
                  text)
    text = text.replace("-", " ")
    text = re.sub(r"[^\w' ]+", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [w for w in words if w]


def edit_distance(ref: list[str], hyp: list[str], free: frozenset[str] = frozenset()) -> int:
    """Levenshtein distance (substitutions + deletions + insertions); inserting a unit in `free` costs 0."""
    prev = [0]
    for h in hyp:
        prev.append(prev[-1] + (h not in free))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + (h not in free), prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def error_rate(reference: str, hypothesis: str, *, free: frozenset[str] = frozenset()) -> tuple[float, str]:
    """(rate, "wer" | "cer"): edit distance over the reference's length, both sides normalised alike;
    the reference's script decides words or characters. An empty reference scores 0 only against silence."""
    cjk = is_cjk(_BRACKETED.sub(" ", reference))
    ref, hyp = units(reference, cjk=cjk), units(hypothesis, cjk=cjk)
    metric = "cer" if cjk else "wer"
    if not ref:
        return (0.0 if not hyp else 1.0), metric
    return edit_distance(ref, hyp, free) / len(ref), metric


def word_error_rate(reference: str, hypothesis: str) -> float:
    """(substitutions + deletions + insertions) / reference words, on normalised words."""
    ref, hyp = normalize_words(reference), normalize_words(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)
