"""The exact upstream LM prompts of Step-Audio-EditX: texts, edit options and token layout.

Source: stepfun-ai/Step-Audio-EditX at aacb90a2 (2025-12-22; `config/prompts.py`,
`config/edit_config.py`, `tts.py`, `app.py`, `tts_infer.py`); zsc/Step-Audio-EditX at 922d7ca5
(2026-02-24, the newest copy seen) has the same texts and layout. Where copies disagree this follows
upstream HEAD:

- The clone template has a trailing space after "speaker prompt text:" and "speaker audio tokens:"
  (vllm-omni's copy drops both; the mlx-swift port drops them too). Upstream and zsc keep them.
- denoise / vad instructions end in "\\n" since 92ff8d60 (earlier revisions had no newline).
- `paralinguistic` is the edit type since 58ec2716; before that the option list and app.py used
  `para-linguistic`. Both spellings are accepted here and mapped to `paralinguistic`.

Token layout (tts.py `_encode_audio_edit_prompt` / `_encode_audio_edit_clone_prompt`): ids 1 (<s>),
4 (<|BOT|>) and 3 (<|EOT|>) are written as literal ids around turns whose text goes through
`tokenizer.encode`, which itself puts <s> first (see editx.lm.text_tokenizer). So every encoded turn
starts with id 1, exactly as upstream's prompts do.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from editx.errors import ValidationError

BOS_ID = 1  # <s>
EOT_ID = 3  # <|EOT|>: ends a turn; the LM stops on it
BOT_ID = 4  # <|BOT|>: opens a turn

EDIT_SYSTEM_PROMPT = (
    "As a highly skilled audio editing and tuning specialist, you excel in interpreting user instructions "
    "and applying precise adjustments to meet their needs. Your expertise spans a wide range of enhancement "
    "capabilities, including but not limited to:\n"
    "# Emotional Enhancement\n"
    "# Speaking Style Transfer\n"
    "# Non-linguistic Adjustments\n"
    "# Audio Tuning & Editing\n"
    "Note: You will receive instructions in natural language and are expected to accurately interpret and "
    "execute the most suitable audio edits and enhancements.\n"
)

# The trailing spaces after "text:" and "tokens:" are part of the upstream template.
CLONE_SYSTEM_PROMPT_TEMPLATE = (
    "Generate audio with the following timbre, prosody and speaking style\n"
    "\n"
    "[speaker_start]\n"
    "speaker name: {speaker}\n"
    "speaker prompt text: \n"
    "{prompt_text}\n"
    "speaker audio tokens: \n"
    "{prompt_wav_tokens}\n"
    "[speaker_end]\n"
)

EMOTIONS = ("happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy", "embarrass", "fear",
            "surprised", "excited", "depressed", "coldness", "admiration", "remove")
# 33 values: 31 styles, "remove", and "exaggerated" (added after "remove" in 58ec2716). The README's
# "32" counts the list before that commit; tts_infer.py's --edit-info choices have all 33.
STYLES = ("serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet", "ethereal", "whisper",
          "gentle", "recite", "generous", "act_coy", "warm", "shy", "comfort", "authority", "chat", "radio",
          "soulful", "story", "vivid", "program", "news", "advertising", "roar", "murmur", "shout", "deeply",
          "loudly", "remove", "exaggerated")
SPEEDS = ("faster", "slower", "more faster", "more slower")
# Paralinguistic tags go inline in the new text (README / app.py), e.g. "Great[Laughter], ...".
PARALINGUISTIC_TAGS = ("[Breathing]", "[Laughter]", "[Surprise-oh]", "[Confirmation-en]", "[Uhm]",
                       "[Surprise-ah]", "[Surprise-wa]", "[Sigh]", "[Question-ei]", "[Dissatisfaction-hnn]")
# Language / dialect tags: README, "add a [Sichuanese] / [Cantonese] / [Japanese] / [Korean] tag before
# your text". Upstream code never touches them: they are plain text at the start of the target text.
LANGUAGE_TAGS = ("[Sichuanese]", "[Cantonese]", "[Japanese]", "[Korean]")

# Edit type -> allowed edit_info values (upstream get_supported_edit_types, minus "clone"; order kept).
EDIT_OPTIONS: dict[str, tuple[str, ...]] = {
    "emotion": EMOTIONS,
    "style": STYLES,
    "vad": (),
    "denoise": (),
    "paralinguistic": (),
    "speed": SPEEDS,
}
EDIT_TYPE_ALIASES = {"para-linguistic": "paralinguistic"}
NO_AUDIO_TEXT_TYPES = ("denoise", "vad")  # tts_infer.py: every other edit needs the audio's transcript

_DENOISE = ("Remove any noise from the given audio while preserving the voice content clearly. Ensure that "
            "the speech quality remains intact with minimal distortion, and eliminate all noise from the audio.\n")
_VAD = ("Remove any silent portions from the given audio while preserving the voice content clearly. Ensure "
        "that the speech quality remains intact with minimal distortion, and eliminate all silence from the "
        "audio.\n")
_TAG = re.compile(r"\[[^\[\]]*\]")


def _allowed(values) -> str:
    return ", ".join(repr(v) for v in values)


def canonical_edit_type(edit_type: str) -> str:
    key = edit_type.strip().lower() if isinstance(edit_type, str) else edit_type
    key = EDIT_TYPE_ALIASES.get(key, key)
    if key not in EDIT_OPTIONS:
        raise ValidationError(f"unknown edit type {edit_type!r}; allowed: {_allowed(EDIT_OPTIONS)} "
                              f"('para-linguistic' is accepted for 'paralinguistic')")
    return key


def validate_edit(edit_type: str, info: str | None = None, text: str | None = None, *,
                  audio_text: str | None = None) -> tuple[str, str | None]:
    """Check an edit request against the upstream options; returns the canonical (edit_type, edit_info).

    `info` is the value for emotion / style / speed and must be empty otherwise. `text` is the new text
    of a paralinguistic edit (its `[Tag]`s must be known tags). `audio_text`, when given, is the
    transcript of the audio, required for every type but denoise and vad (tts_infer.py's rule).
    """
    kind = canonical_edit_type(edit_type)
    options = EDIT_OPTIONS[kind]
    value = info.strip() if isinstance(info, str) else info
    if options:
        value = value.lower() if value else value
        if not value or value not in options:
            raise ValidationError(f"edit_info {info!r} is not a {kind} option; allowed: {_allowed(options)}")
    elif value:
        raise ValidationError(f"edit type {kind!r} takes no edit_info (got {info!r}); leave it empty")
    else:
        value = None
    if kind == "paralinguistic":
        if not isinstance(text, str) or not text.strip():
            raise ValidationError("a paralinguistic edit needs the new text: the transcript with tags inserted "
                                  f"where the sounds go, e.g. 'Great[Laughter], ...'; tags: {', '.join(PARALINGUISTIC_TAGS)}")
        unknown = [t for t in _TAG.findall(text) if t not in PARALINGUISTIC_TAGS + LANGUAGE_TAGS]
        if unknown:
            raise ValidationError(f"unknown paralinguistic tag(s) {', '.join(unknown)}; "
                                  f"allowed: {', '.join(PARALINGUISTIC_TAGS)}")
    if audio_text is not None and kind not in NO_AUDIO_TEXT_TYPES and not audio_text.strip():
        raise ValidationError(f"a {kind} edit needs the transcript of the input audio (audio text); "
                              "only denoise and vad work without it")
    return kind, value


def edit_instruction(edit_type: str, edit_info: str | None, audio_text: str | None,
                     new_text: str | None = None) -> str:
    """The instruction line of tts.py `_build_audio_edit_instruction` (no validation here)."""
    kind = canonical_edit_type(edit_type)
    audio_text = audio_text.strip() if audio_text else ""
    if kind in ("emotion", "speed"):
        # Upstream sends speed through the emotion branch, "remove" wording included.
        if edit_info == "remove":
            return f"Remove any emotion in the following audio and the reference text is: {audio_text}\n"
        return f"Make the following audio more {edit_info}. The text corresponding to the audio is: {audio_text}\n"
    if kind == "style":
        if edit_info == "remove":
            return f"Remove any speaking styles in the following audio and the reference text is: {audio_text}\n"
        return (f"Make the following audio more {edit_info} style. "
                f"The text corresponding to the audio is: {audio_text}\n")
    if kind == "denoise":
        return _DENOISE
    if kind == "vad":
        return _VAD
    return (f"Add some non-verbal sounds to make the audio more natural, the new text is : {new_text}\n"
            f"  The text corresponding to the audio is: {audio_text}\n")


def with_language_tag(text: str, language: str | None) -> str:
    """Prefix a target text with a language tag ("Sichuanese" or "[Sichuanese]"), unless it has one."""
    if not language:
        return text
    tag = language.strip()
    tag = tag if tag.startswith("[") else f"[{tag}]"
    match = {t.lower(): t for t in LANGUAGE_TAGS}.get(tag.lower())
    if match is None:
        raise ValidationError(f"unknown language tag {language!r}; allowed: {', '.join(LANGUAGE_TAGS)}")
    return text if text.lstrip().startswith(match) else match + text


def clone_speaker_name(prompt_text: str, samples: np.ndarray) -> str:
    """tts.py `generate_clone_voice_id`: "clone_" + sha256(text, first/last 1000 float32 samples)[:16].

    Upstream hashes the waveform as torchaudio.load returns it (float32, channels first, flattened);
    pass the decoded samples in that form ((N,) for mono, (C, N) for multi-channel).
    """
    hasher = hashlib.sha256()
    hasher.update(prompt_text.encode("utf-8"))
    flat = np.ascontiguousarray(samples, dtype="<f4").reshape(-1)
    part = np.concatenate([flat[:1000], flat[-1000:]]) if flat.size > 2000 else flat
    hasher.update(part.tobytes())
    return f"clone_{hasher.hexdigest()[:16]}"


def _turn(tok, role: str) -> list[int]:
    return [BOT_ID] + tok.encode(f"{role}\n")


def build_edit_prompt(tok, *, edit_type: str, edit_info: str | None, audio_text: str | None,
                      audio_tokens_str: str, new_text: str | None = None) -> list[int]:
    """Prompt ids for an edit (tts.py `_encode_audio_edit_prompt`); validates the request first."""
    kind, info = validate_edit(edit_type, edit_info, new_text, audio_text=audio_text or "")
    instruction = edit_instruction(kind, info, audio_text, new_text)
    ids = [BOS_ID, BOT_ID] + tok.encode(f"system\n{EDIT_SYSTEM_PROMPT}") + [EOT_ID]
    ids += _turn(tok, "human") + tok.encode(f"{instruction}\n{audio_tokens_str.strip()}\n") + [EOT_ID]
    return ids + _turn(tok, "assistant")


def build_clone_prompt_parts(tok, *, speaker_name: str, prompt_text: str, prompt_audio_tokens_str: str,
                             target_text: str, language: str | None = None) -> tuple[list[int], list[int]]:
    """The clone prompt as (voice prefix, request suffix); their concatenation is the prompt.

    The prefix (<s>, the system turn with the speaker block) depends only on the voice, so its KV
    cache can be reused across requests; the suffix is the human turn and the assistant header.
    The target text is encoded behind a "\\n" whose own encoding is then cut off, so it starts
    without the "▁" (and without the <s>) that encoding it alone would give.
    """
    if not isinstance(target_text, str) or not target_text.strip():
        raise ValidationError("clone needs a non-empty target text (the text to speak in the cloned voice)")
    if not isinstance(prompt_text, str) or not prompt_text.strip():
        raise ValidationError("clone needs the transcript of the prompt audio (prompt text)")
    target_text = with_language_tag(target_text, language)
    system = CLONE_SYSTEM_PROMPT_TEMPLATE.format(speaker=speaker_name, prompt_text=prompt_text,
                                                 prompt_wav_tokens=prompt_audio_tokens_str)
    prefix = [BOS_ID, BOT_ID] + tok.encode(f"system\n{system}") + [EOT_ID]
    target = tok.encode("\n" + target_text)[len(tok.encode("\n")):]
    return prefix, _turn(tok, "human") + target + [EOT_ID] + _turn(tok, "assistant")


def build_clone_prompt(tok, *, speaker_name: str, prompt_text: str, prompt_audio_tokens_str: str,
                       target_text: str, language: str | None = None) -> list[int]:
    """Prompt ids for a clone (tts.py `_encode_audio_edit_clone_prompt`)."""
    prefix, suffix = build_clone_prompt_parts(tok, speaker_name=speaker_name, prompt_text=prompt_text,
                                              prompt_audio_tokens_str=prompt_audio_tokens_str,
                                              target_text=target_text, language=language)
    return prefix + suffix
