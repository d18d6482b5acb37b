"""The Step1 text tokenizer: the official SentencePiece files read into a `tokenizers` pipeline.

Step-Audio-EditX ships `tokenizer.model` (a SentencePiece Unigram ModelProto with byte fallback) and a
small `tokenizer_config.json` naming `LlamaTokenizer` with no `add_bos_token` key; **no `tokenizer.json`
ships**. Whether its `legacy` field is present is not known (the sister model's file says `legacy:
false`), so the rule is explicit (LEGACY_RULE below): absent means the non-legacy layout.
Upstream loads it with `AutoTokenizer.from_pretrained(...)` (transformers 4.53.3), which builds a
`LlamaTokenizerFast` by converting the SentencePiece model (transformers' `LlamaConverter`):

- the Unigram model gets every piece with its score (ids 0..2 scored 0.0), `unk_id` 0, byte fallback;
- CONTROL (special) and USER_DEFINED pieces (`<|BOT|>`, `<audio_N>`, ...) become added tokens,
  matched in the raw text before anything else;
- no normalizer; a Metaspace pre-tokenizer (" " -> "▁", `prepend_scheme="first"`, no split);
- decoding: "▁" -> " ", byte fallback, fuse, strip one leading space.

`tokenizer.encode(text)` there means `add_special_tokens=True`, and the Llama post-processor then
puts `<s>` in front (`add_bos_token` defaults to true when the config does not say otherwise) and
`</s>` behind only if `add_eos_token` is set. `TextTokenizer.encode` reproduces exactly that; the
prompt builders in `editx.lm.prompts` rely on it, as upstream's do. (transformers 5.x converts the
same files differently: no <s>, other pieces. Upstream pins transformers==4.53.3; this follows that.)
Rule: a `tokenizer.json` in the folder (the release has none; some third-party conversions add one)
is used in place of the SentencePiece file, as `AutoTokenizer` would; the choice is logged.
"""

from __future__ import annotations

import json
import logging
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

from editx.errors import ModelFilesError

log = logging.getLogger(__name__)

SPM_FILE = "tokenizer.model"
CONFIG_FILE = "tokenizer_config.json"
FAST_FILE = "tokenizer.json"
SPIECE_UNDERLINE = "▁"
# SentencePiece piece types (sentencepiece_model.proto, SentencePiece.Type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1  # TrainerSpec.ModelType
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")
# Rule for a tokenizer_config.json without `legacy`: tokenize as with `legacy: false` (Metaspace
# pre-tokenizer, prepend_scheme "first", no normalizer). Evidence that this is the release's layout:
# the sister model's file says `legacy: false`; the released file's 314 bytes match that file with the
# key; a public port's conversion of the released files has exactly this pre-tokenizer. (transformers
# 4.53.3 itself would pick the legacy layout for a file truly without the key.)
LEGACY_RULE = "absent legacy = legacy false, the layout of the released tokenizer"


class Piece(NamedTuple):
    piece: str
    score: float
    type: int = NORMAL


@dataclass(frozen=True)
class SpmModel:
    """The parts of a SentencePiece ModelProto the fast conversion reads."""

    pieces: tuple[Piece, ...]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    unk_id: int = 0


# --- protobuf wire format (just enough of it for sentencepiece_model.proto) -------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field number, wire type, value) where value is an int (varint, fixed) or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated field")
        yield number, wire, value


def _int32(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_piece(msg: bytes) -> Piece:
    text, score, kind = "", 0.0, NORMAL
    for n, w, v in _fields(msg):
        if n == 1 and w == 2:
            text = v.decode("utf-8")
        elif n == 2 and w == 5:
            score = struct.unpack("<f", v)[0]
        elif n == 3 and w == 0:
            kind = v
    return Piece(text, score, kind)


def _parse_pieces_fast(data: bytes, pos: int, pieces: list[Piece]) -> int:
    """Read consecutive short `pieces` entries in the usual layout (0x0a len [0x0a n piece 0x15 f32
    (0x18 type)]); returns where it stopped so the general reader takes over from there."""
    unpack = struct.Struct("<f").unpack_from
    size = len(data)
    while pos + 2 < size and data[pos] == 0x0A and data[pos + 1] < 0x80 and data[pos + 2] == 0x0A:
        end = pos + 2 + data[pos + 1]
        n = data[pos + 3]
        body = pos + 4 + n
        if n >= 0x80 or end > size or body + 5 > end or data[body] != 0x15:
            break
        if end == body + 5:
            kind = NORMAL
        elif end == body + 7 and data[body + 5] == 0x18 and data[body + 6] < 0x80:
            kind = data[body + 6]
        else:
            break
        pieces.append(Piece(data[pos + 4:body].decode("utf-8"), unpack(data, body + 1)[0], kind))
        pos = end
    return pos


def parse_spm_model(data: bytes) -> SpmModel:
    """Parse a serialized sentencepiece ModelProto (field numbers from sentencepiece_model.proto)."""
    pieces: list[Piece] = []
    model_type, byte_fallback, unk_id = UNIGRAM, False, 0
    pos = _parse_pieces_fast(data, 0, pieces)
    for number, wire, value in _fields(data[pos:]):
        if number == 1 and wire == 2:  # repeated SentencePiece pieces
            pieces.append(_parse_piece(value))
        elif number == 2 and wire == 2:  # TrainerSpec
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    model_type = v
                elif n == 35 and w == 0:
                    byte_fallback = bool(v)
                elif n == 40 and w == 0:
                    unk_id = _int32(v)
    if not pieces:
        raise ValueError("no pieces")
    return SpmModel(tuple(pieces), model_type, byte_fallback, unk_id)


# --- the fast tokenizer, as transformers' LlamaConverter (legacy=False) builds it ---------------------

def tokenizer_from_spm(spm: SpmModel) -> Tokenizer:
    if spm.model_type != UNIGRAM:
        raise ModelFilesError(f"{SPM_FILE} holds a model of type {spm.model_type}, not a Unigram (1) model; "
                              "Step-Audio-EditX ships a Unigram model: re-download the model files")
    # LlamaConverter scores ids 0..2 with 0.0 and always uses unk id 0.
    vocab = [(p.piece, 0.0 if i < 3 else p.score) for i, p in enumerate(spm.pieces)]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type == CONTROL)
                    for p in spm.pieces if p.type in (CONTROL, USER_DEFINED)])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_UNDERLINE, prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_UNDERLINE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    return tok


def _token_text(value, default: str | None) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) or value is None else default


@dataclass(frozen=True)
class TokenizerConfig:
    """The fields of tokenizer_config.json that change token ids (LlamaTokenizerFast defaults)."""

    add_bos_token: bool = True
    add_eos_token: bool = False
    bos_token: str | None = "<s>"
    eos_token: str | None = "</s>"
    unk_token: str | None = "<unk>"
    legacy: bool | None = None
    tokenizer_class: str | None = None

    @classmethod
    def from_json(cls, data: dict) -> TokenizerConfig:
        d = cls()
        return cls(add_bos_token=bool(data.get("add_bos_token", d.add_bos_token)),
                   add_eos_token=bool(data.get("add_eos_token", d.add_eos_token)),
                   bos_token=_token_text(data.get("bos_token", d.bos_token), d.bos_token),
                   eos_token=_token_text(data.get("eos_token", d.eos_token), d.eos_token),
                   unk_token=_token_text(data.get("unk_token", d.unk_token), d.unk_token),
                   legacy=data.get("legacy"), tokenizer_class=data.get("tokenizer_class"))


def _read_config(model_dir: Path) -> TokenizerConfig:
    path = model_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelFilesError(f"{path} is missing; the Step-Audio-EditX folder must hold {CONFIG_FILE} next to "
                              f"{SPM_FILE}: re-download the model files")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFilesError(f"{path} is not valid JSON ({e}); re-download the model files") from e
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} must hold a JSON object; re-download the model files")
    cfg = TokenizerConfig.from_json(data)
    if cfg.tokenizer_class is not None and cfg.tokenizer_class not in LLAMA_CLASSES:
        raise ModelFilesError(f"{path} names tokenizer_class {cfg.tokenizer_class!r}; Step-Audio-EditX uses "
                              f"{LLAMA_CLASSES[0]!r}: point the engine at the Step-Audio-EditX folder")
    if cfg.legacy is None:
        log.info("%s has no `legacy` key: using the non-legacy layout (%s)", path, LEGACY_RULE)
    elif cfg.legacy is not False:
        # Legacy Llama tokenization prepends "▁" after every special token; only the non-legacy
        # layout is known to match the weights.
        raise ModelFilesError(f"{path} has legacy={cfg.legacy!r}; only `\"legacy\": false` (or no legacy key, "
                              "as released) is supported: re-download the model files")
    return cfg


class TextTokenizer:
    """Text <-> ids exactly as upstream's `AutoTokenizer` for Step-Audio-EditX encodes them."""

    def __init__(self, tokenizer: Tokenizer, config: TokenizerConfig, source: Path) -> None:
        self._tok = tokenizer
        self.config = config
        self.source = source
        # LlamaTokenizerFast registers unk/bos/eos as special tokens even when the model lacks them
        # as pieces; registering an existing one again is a no-op that keeps its id.
        specials = [t for t in (config.unk_token, config.bos_token, config.eos_token) if t]
        tokenizer.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in specials])
        self.bos_id = self._special_id(config.bos_token)
        self.eos_id = self._special_id(config.eos_token)
        self.unk_id = self._special_id(config.unk_token)

    def _special_id(self, token: str | None) -> int | None:
        return None if token is None else self._tok.token_to_id(token)

    @classmethod
    def load(cls, model_dir: str | Path) -> TextTokenizer:
        """Read `tokenizer_config.json` plus `tokenizer.json` (if present) or `tokenizer.model`."""
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise ModelFilesError(f"{model_dir} is not a folder; pass the Step-Audio-EditX model folder")
        config = _read_config(model_dir)
        fast, spm = model_dir / FAST_FILE, model_dir / SPM_FILE
        if fast.is_file():
            try:
                tok = Tokenizer.from_file(str(fast))
            except Exception as e:  # the Rust loader raises a bare Exception on bad JSON
                raise ModelFilesError(f"{fast} cannot be read as a tokenizers file ({e}); delete it to use "
                                      f"{SPM_FILE} (the release ships no {FAST_FILE})") from e
            log.info("text tokenizer from %s (preferred over %s, as AutoTokenizer does)", fast, SPM_FILE)
            return cls(tok, config, fast)
        if not spm.is_file():
            raise ModelFilesError(f"{model_dir} holds neither {SPM_FILE} nor {FAST_FILE}; the Step-Audio-EditX "
                                  "folder is incomplete: re-download the model files")
        try:
            model = parse_spm_model(spm.read_bytes())
        except (OSError, ValueError, UnicodeDecodeError, struct.error) as e:
            raise ModelFilesError(f"{spm} is not a SentencePiece model ({e}); re-download the model files") from e
        log.debug("text tokenizer: %d pieces from %s", len(model.pieces), spm)
        return cls(tokenizer_from_spm(model), config, spm)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """`tokenizer.encode(text)` as upstream calls it: special tokens added per the config."""
        ids = self.encode_plain(text)
        if self.config.add_bos_token and self.bos_id is not None:
            ids.insert(0, self.bos_id)
        if self.config.add_eos_token and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def encode_plain(self, text: str) -> list[int]:
        """The pieces of `text` alone (no BOS/EOS)."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, *, skip_special_tokens: bool = False) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int:
        tid = self._tok.token_to_id(token)
        if tid is None:
            raise ModelFilesError(f"the text tokenizer in {self.source} has no token {token!r}; "
                                  "the model files do not match Step-Audio-EditX")
        return tid

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    def save_fast(self, path: str | Path) -> None:
        """Write the assembled pipeline as a `tokenizer.json` (loads back to the same ids)."""
        self._tok.save(str(path))
