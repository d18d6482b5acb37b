"""Upstream prompt texts and token layout, and the Step1 text tokenizer, against goldens from upstream code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from editx.errors import ModelFilesError, ValidationError
from editx.fixtures.text_tokenizer import write_tokenizer_files
from editx.lm import prompts
from editx.lm.text_tokenizer import TextTokenizer

GOLDEN = json.loads((Path(__file__).parent / "golden" / "prompts" / "upstream_prompts.json").read_text("utf-8"))


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("Step-Audio-EditX")
    write_tokenizer_files(d, "tiny")
    return d


@pytest.fixture(scope="module")
def tok(tok_dir) -> TextTokenizer:
    return TextTokenizer.load(tok_dir)


def _samples(seed: int, shape) -> np.ndarray:
    # Same draw as the oracle script (numpy PCG64 standard normal, scaled, float32).
    return (np.random.default_rng(seed).standard_normal(shape) * 0.1).astype(np.float32)


# --- tokenizer ---------------------------------------------------------------------------------------

def test_fixture_layout_matches_official_ids(tok):
    assert tok.vocab_size == 74752
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>")] == [0, 1, 2, 3, 4]
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    assert tok.encode_plain("a\nb")[1] == 78  # "\n" is byte piece <0x0A>
    assert (prompts.BOS_ID, prompts.EOT_ID, prompts.BOT_ID) == (1, 3, 4)


@pytest.mark.parametrize("n", [0, 1, 1023, 1024, 4095, 5119, 9215])
def test_audio_tokens_map_to_65536_plus_n(tok, n):
    assert tok.token_to_id(f"<audio_{n}>") == 65536 + n
    assert tok.encode_plain(f"<audio_{n}>") == [65536 + n]


def test_audio_token_string_encodes_to_ids(tok):
    s = GOLDEN["audio_tokens_str"]
    mixed = [int(m) for m in re.findall(r"<audio_(\d+)>", s)]
    assert len(mixed) == 20  # 9 vq02 + 14 vq06 -> 4 whole groups of 2 + 3
    assert tok.encode_plain(s) == [65536 + m for m in mixed]
    assert tok.encode(s) == [1] + [65536 + m for m in mixed]


@pytest.mark.parametrize("case", GOLDEN["encode"], ids=lambda c: repr(c["text"])[:30])
def test_encode_and_decode_match_upstream(tok, case):
    assert tok.encode(case["text"]) == case["ids"]
    assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded"]


@pytest.mark.parametrize("text", ["Hello world", "你好，今天天气真好", "é😀 ünïcode\ttab", "line\nbreak ",
                                  "Great[Laughter], nice.", "<audio_7>x<audio_5000>"])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode_plain(text)) == text
    assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_tokenizer_json_gives_the_same_ids(tok, tok_dir, tmp_path):
    (tmp_path / "tokenizer_config.json").write_bytes((tok_dir / "tokenizer_config.json").read_bytes())
    tok.save_fast(tmp_path / "tokenizer.json")
    fast = TextTokenizer.load(tmp_path)
    assert fast.source.name == "tokenizer.json"
    for case in GOLDEN["encode"]:
        assert fast.encode(case["text"]) == case["ids"]


def test_release_shaped_files_and_the_legacy_rule(tok, tok_dir, tmp_path):
    # The release ships tokenizer.model + tokenizer_config.json only; our fixture leaves `legacy` out.
    assert sorted(p.name for p in tok_dir.iterdir()) == ["tokenizer.model", "tokenizer_config.json"]
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    assert "legacy" not in cfg and tok.config.legacy is None and tok.source.name == "tokenizer.model"
    # Rule: an absent `legacy` tokenizes exactly as `legacy: false` (the goldens were made with it).
    (tmp_path / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "legacy": False}))
    explicit = TextTokenizer.load(tmp_path)
    for case in GOLDEN["encode"]:
        assert explicit.encode(case["text"]) == tok.encode(case["text"]) == case["ids"]
    for bad in (True, "false", 0):
        (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "legacy": bad}))
        with pytest.raises(ModelFilesError, match="legacy"):
            TextTokenizer.load(tmp_path)


def test_add_bos_token_false_is_honoured(tok_dir, tmp_path):
    cfg = json.loads((tok_dir / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer.model").write_bytes((tok_dir / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**cfg, "add_bos_token": False}))
    assert TextTokenizer.load(tmp_path).encode("Hello") == TextTokenizer.load(tok_dir).encode("Hello")[1:]


def test_missing_and_corrupt_files_raise_model_files_error(tok_dir, tmp_path):
    with pytest.raises(ModelFilesError, match="not a folder"):
        TextTokenizer.load(tmp_path / "nope")
    with pytest.raises(ModelFilesError, match="tokenizer_config.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_bytes((tok_dir / "tokenizer_config.json").read_bytes())
    with pytest.raises(ModelFilesError, match="neither tokenizer.model nor tokenizer.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\x0a\xff\xff\xff")
    with pytest.raises(ModelFilesError, match="not a SentencePiece model"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{broken")
    with pytest.raises(ModelFilesError, match="tokenizer.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
    with pytest.raises(ModelFilesError, match="JSON object"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer",
                                                                 "legacy": True}))
    with pytest.raises(ModelFilesError, match="legacy"):
        TextTokenizer.load(tmp_path)


# --- prompt texts and options ---------------------------------------------------------------------------

def test_system_prompts_match_upstream_exactly():
    assert prompts.EDIT_SYSTEM_PROMPT == GOLDEN["system_prompts"]["edit"]
    assert prompts.CLONE_SYSTEM_PROMPT_TEMPLATE == GOLDEN["system_prompts"]["clone_template"]
    assert "speaker prompt text: \n" in prompts.CLONE_SYSTEM_PROMPT_TEMPLATE  # the trailing spaces


def test_edit_options_match_upstream():
    upstream = {k: tuple(v) for k, v in GOLDEN["options"].items() if k != "clone"}
    assert prompts.EDIT_OPTIONS == upstream
    assert len(prompts.EMOTIONS) == 15 and len(prompts.STYLES) == 33 and len(prompts.SPEEDS) == 4
    assert len(prompts.PARALINGUISTIC_TAGS) == 10


@pytest.mark.parametrize("case", GOLDEN["speaker_names"], ids=lambda c: c["text"])
def test_clone_speaker_name_matches_upstream(case):
    assert prompts.clone_speaker_name(case["text"], _samples(case["seed"], case["shape"])) == case["name"]


@pytest.mark.parametrize("case", GOLDEN["clone"], ids=lambda c: c["target_text"][:20])
def test_clone_prompt_ids_match_upstream(tok, case):
    speaker = prompts.clone_speaker_name(case["prompt_text"], _samples(case["samples_seed"], case["samples_shape"]))
    assert speaker == case["speaker"]
    ids = prompts.build_clone_prompt(tok, speaker_name=speaker, prompt_text=case["prompt_text"],
                                     prompt_audio_tokens_str=GOLDEN["audio_tokens_str"],
                                     target_text=case["target_text"])
    assert ids == case["ids"]
    prefix, suffix = prompts.build_clone_prompt_parts(
        tok, speaker_name=speaker, prompt_text=case["prompt_text"],
        prompt_audio_tokens_str=GOLDEN["audio_tokens_str"], target_text=case["target_text"])
    assert prefix + suffix == ids and prefix[-1] == prompts.EOT_ID and suffix[0] == prompts.BOT_ID


def test_language_tag_is_a_target_text_prefix(tok):
    case = next(c for c in GOLDEN["clone"] if c["target_text"].startswith("[Cantonese]"))
    kwargs = {"speaker_name": case["speaker"], "prompt_text": case["prompt_text"],
              "prompt_audio_tokens_str": GOLDEN["audio_tokens_str"]}
    bare = case["target_text"][len("[Cantonese]"):]
    assert prompts.build_clone_prompt(tok, target_text=bare, language="Cantonese", **kwargs) == case["ids"]
    assert prompts.build_clone_prompt(tok, target_text=case["target_text"], language="[cantonese]",
                                      **kwargs) == case["ids"]
    with pytest.raises(ValidationError, match=r"\[Sichuanese\].*\[Korean\]"):
        prompts.with_language_tag("x", "Klingon")


@pytest.mark.parametrize("case", GOLDEN["edit"],
                         ids=lambda c: f"{c['edit_type']}-{c['edit_info'] or (c['new_text'] or '')[:14]}")
def test_edit_prompt_ids_match_upstream(tok, case):
    args = (case["edit_type"], case["edit_info"], case["audio_text"], case["new_text"])
    assert prompts.edit_instruction(*args) == case["instruction"]
    ids = prompts.build_edit_prompt(tok, edit_type=case["edit_type"], edit_info=case["edit_info"],
                                    audio_text=case["audio_text"], audio_tokens_str=GOLDEN["audio_tokens_str"],
                                    new_text=case["new_text"])
    assert ids == case["ids"]


def test_both_paralinguistic_spellings(tok):
    case = next(c for c in GOLDEN["edit"] if c["edit_type"] == "paralinguistic")
    ids = prompts.build_edit_prompt(tok, edit_type="para-linguistic", edit_info=None, audio_text=case["audio_text"],
                                    audio_tokens_str=GOLDEN["audio_tokens_str"], new_text=case["new_text"])
    assert ids == case["ids"]
    assert prompts.validate_edit("para-linguistic", None, "Hi[Sigh]") == ("paralinguistic", None)


# --- validation -------------------------------------------------------------------------------------------

def test_validate_edit_returns_canonical_values():
    assert prompts.validate_edit("emotion", "happy", None) == ("emotion", "happy")
    assert prompts.validate_edit(" Style ", " Act_Coy ", None) == ("style", "act_coy")
    assert prompts.validate_edit("speed", "more faster", None) == ("speed", "more faster")
    assert prompts.validate_edit("denoise", "", None) == ("denoise", None)
    assert prompts.validate_edit("vad", None, None, audio_text="") == ("vad", None)


def test_unknown_edit_type_lists_allowed_types():
    for bad in ("clone", "pitch", ""):
        with pytest.raises(ValidationError) as e:
            prompts.validate_edit(bad, "happy", None)
        assert all(repr(t) in str(e.value) for t in prompts.EDIT_OPTIONS)


@pytest.mark.parametrize("kind", ["emotion", "style", "speed"])
def test_unknown_or_missing_value_lists_allowed_values(kind):
    for bad in ("ecstatic", None, ""):
        with pytest.raises(ValidationError) as e:
            prompts.validate_edit(kind, bad, None)
        assert all(repr(v) in str(e.value) for v in prompts.EDIT_OPTIONS[kind])
    with pytest.raises(ValidationError):
        prompts.validate_edit("speed", "remove", None)  # "remove" is an emotion/style value only


def test_valueless_types_reject_a_value():
    with pytest.raises(ValidationError, match="takes no edit_info"):
        prompts.validate_edit("denoise", "happy", None)


def test_paralinguistic_needs_text_with_known_tags():
    for missing in (None, "", "   "):
        with pytest.raises(ValidationError, match=r"needs the new text.*\[Laughter\]"):
            prompts.validate_edit("paralinguistic", None, missing)
    with pytest.raises(ValidationError, match=r"\[Cough\].*allowed: \[Breathing\]"):
        prompts.validate_edit("paralinguistic", None, "Hello[Cough] there")
    assert prompts.validate_edit("paralinguistic", None, "Hi[Uhm] there[Sigh]") == ("paralinguistic", None)


def test_audio_text_is_required_except_for_denoise_and_vad(tok):
    with pytest.raises(ValidationError, match="transcript"):
        prompts.build_edit_prompt(tok, edit_type="emotion", edit_info="sad", audio_text="  ",
                                  audio_tokens_str=GOLDEN["audio_tokens_str"])
    case = next(c for c in GOLDEN["edit"] if c["edit_type"] == "denoise")
    ids = prompts.build_edit_prompt(tok, edit_type="denoise", edit_info=None, audio_text=None,
                                    audio_tokens_str=GOLDEN["audio_tokens_str"])
    assert ids == case["ids"]  # the denoise instruction does not contain the audio text


def test_clone_needs_texts(tok):
    kwargs = {"speaker_name": "clone_x", "prompt_audio_tokens_str": GOLDEN["audio_tokens_str"]}
    with pytest.raises(ValidationError, match="target text"):
        prompts.build_clone_prompt(tok, prompt_text="p", target_text=" ", **kwargs)
    with pytest.raises(ValidationError, match="prompt text"):
        prompts.build_clone_prompt(tok, prompt_text="", target_text="t", **kwargs)
