"""Parse a dialogue script: one spoken line (or pause) per text line, voices and edits inline.

    # comments and blank lines are skipped
    [alice] [emotion:happy] We did it! [Laughter]
    [bob | style:whisper] Keep it down.
    [pause 0.8]
    And this line is alice again, no tag needed.

Leading bracket groups are directives; items inside a group are separated by `|`. An item is a
voice label (a bare word, first), `voice:LABEL`, an edit `type:value` (types and values as in
GET /v1/edits; `speed:1.2` is a rate), a bare `vad` / `denoise`, or, when the plain-words mapper
is available, a plain instruction such as `sound happier`. A line alone in `[pause S]` is silence.
After the directives comes the text; paralinguistic tags in it (`[Laughter]`, `[Sigh]`, ...) ask for
a paralinguistic edit that inserts those sounds. A line without a voice continues the previous
line's voice (the request's default voice before any). Every error names its line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from editx.errors import ValidationError

# Documented limits (docs/SCRIPTS.md), checked before any audio work starts.
MAX_SCRIPT_CHARS = 100_000
MAX_SCRIPT_ITEMS = 500  # spoken lines + pauses
MAX_LINE_CHARS = 2_000  # the text of one spoken line
MAX_PAUSE_S = 10.0
MAX_TOTAL_PAUSE_S = 300.0
MAX_EDITS_PER_LINE = 4

_PAUSE = re.compile(r"^pause\s*(?:[:=]\s*|\s+)([0-9]*\.?[0-9]+)\s*(?:s|sec|seconds?)?$", re.IGNORECASE)
_BARE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


class ScriptError(ValidationError):
    """A script that cannot be spoken; `line` and `column` (1-based) say where."""

    def __init__(self, line: int, column: int | None, message: str) -> None:
        where = f"line {line}" + (f", column {column}" if column else "")
        super().__init__(f"{where}: {message}")
        self.line, self.column = line, column


@dataclass(frozen=True)
class Edit:
    type: str
    info: str | None = None

    def to_dict(self) -> dict:
        return {"type": self.type, "info": self.info}


@dataclass(frozen=True)
class SpokenLine:
    line: int  # 1-based line number in the script
    voice: str | None  # the label as written (None: continue / default)
    text: str  # what is spoken, paralinguistic tags removed
    tagged_text: str | None  # the text with its paralinguistic tags (None when it has none)
    edits: tuple[Edit, ...] = ()
    speed: float = 1.0
    edit_columns: tuple[int, ...] = field(default=(), compare=False)  # where each edit was written
    voice_column: int = field(default=1, compare=False)


@dataclass(frozen=True)
class Pause:
    line: int
    seconds: float


ScriptItem = SpokenLine | Pause


def _tags():
    from editx.lm.prompts import LANGUAGE_TAGS, PARALINGUISTIC_TAGS

    return PARALINGUISTIC_TAGS, LANGUAGE_TAGS


def _edit_types() -> dict[str, tuple[str, ...]]:
    from editx.lm.prompts import EDIT_OPTIONS, EDIT_TYPE_ALIASES

    return {**EDIT_OPTIONS, **{a: EDIT_OPTIONS[t] for a, t in EDIT_TYPE_ALIASES.items()}}


def parse_script(text: str, *, instruction_mapper=None) -> list[ScriptItem]:
    """The script's spoken lines and pauses, in order. Raises ScriptError naming line and column.

    `instruction_mapper(words) -> [(type, info), ...]` turns a plain-words item into edits, in order
    (raising ValidationError when it cannot); without one, plain words are an error that shows the
    `type:value` form."""
    if not isinstance(text, str):
        raise ValidationError("script must be a string")
    if len(text) > MAX_SCRIPT_CHARS:
        raise ValidationError(f"the script is {len(text)} characters; the limit is {MAX_SCRIPT_CHARS}")
    items: list[ScriptItem] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        items.append(_parse_line(number, raw, instruction_mapper))
        if len(items) > MAX_SCRIPT_ITEMS:
            raise ScriptError(number, None, f"the script has more than {MAX_SCRIPT_ITEMS} lines and pauses "
                                            "(the limit); split it into several requests")
    pauses = [i for i in items if isinstance(i, Pause)]
    if sum(p.seconds for p in pauses) > MAX_TOTAL_PAUSE_S:
        total, over = 0.0, pauses[-1]
        for p in pauses:
            total += p.seconds
            if total > MAX_TOTAL_PAUSE_S:
                over = p
                break
        raise ScriptError(over.line, None, f"the script's pauses add up to more than {MAX_TOTAL_PAUSE_S:g} s "
                                           "(the limit)")
    if not any(isinstance(i, SpokenLine) for i in items):
        raise ValidationError("the script has no line to speak")
    return items


def _groups(number: int, raw: str) -> tuple[list[tuple[int, str]], int]:
    """The leading `[...]` groups as (column of the content, content), and where the text starts."""
    paralinguistic, language = _tags()
    known = set(paralinguistic) | set(language)
    groups, pos = [], 0
    while True:
        while pos < len(raw) and raw[pos].isspace():
            pos += 1
        if pos >= len(raw) or raw[pos] != "[":
            return groups, pos
        end = raw.find("]", pos)
        if end < 0:
            raise ScriptError(number, pos + 1, "'[' is never closed with ']'")
        if raw[pos:end + 1] in known:  # a sound or language tag opens the text itself
            return groups, pos
        if "[" in raw[pos + 1:end]:
            raise ScriptError(number, raw.index("[", pos + 1) + 1, "'[' inside a bracket group")
        groups.append((pos + 2, raw[pos + 1:end]))
        pos = end + 1


def _split_items(column: int, content: str) -> list[tuple[int, str]]:
    out, offset = [], 0
    for part in content.split("|"):
        lead = len(part) - len(part.lstrip())
        out.append((column + offset + lead, part.strip()))
        offset += len(part) + 1
    return out


def _parse_line(number: int, raw: str, mapper) -> ScriptItem:
    groups, text_start = _groups(number, raw)
    items = [it for col, content in groups for it in _split_items(col, content)]
    text = raw[text_start:].strip()
    if len(items) == 1 and not text and (m := _PAUSE.match(items[0][1])):
        seconds = float(m.group(1))
        if not 0 < seconds <= MAX_PAUSE_S:
            raise ScriptError(number, items[0][0], f"a pause must be longer than 0 and at most {MAX_PAUSE_S} s, "
                                                   f"got {seconds}")
        return Pause(number, seconds)
    voice, voice_col, speed = None, 1, 1.0
    edits: list[Edit] = []
    columns: list[int] = []
    types = _edit_types()
    for k, (col, item) in enumerate(items):
        if not item:
            raise ScriptError(number, col, "empty directive; write a voice name or an edit like emotion:happy")
        if _PAUSE.match(item):
            raise ScriptError(number, col, "a pause goes on a line of its own, e.g. [pause 0.8]")
        key, sep, value = (p.strip() for p in item.partition(":"))
        if sep and key.lower() == "voice":
            voice, voice_col = _voice(number, col, value, voice), col
        elif sep and key.lower() == "speed" and _is_number(value):
            speed = float(value)
            if not 0.25 <= speed <= 4.0:
                raise ScriptError(number, col, f"speed must be in 0.25..4.0, got {value}")
        elif sep:
            if key.lower() not in types:
                raise ScriptError(number, col, f"unknown edit type {key!r}; allowed: {', '.join(types)}")
            edits.append(Edit(key.lower(), value or None))
            columns.append(col)
        elif item.lower() in ("vad", "denoise"):
            edits.append(Edit(item.lower()))
            columns.append(col)
        elif k == 0 and _BARE.match(item):
            voice, voice_col = _voice(number, col, item, voice), col
        elif mapper is not None:
            try:
                mapped = list(mapper(item))
            except ValidationError as exc:
                raise ScriptError(number, col, str(exc)) from None
            edits += [Edit(edit_type, info) for edit_type, info in mapped]
            columns += [col] * len(mapped)
        else:
            hint = "a voice goes first in a line's directives; " if _BARE.match(item) else ""
            raise ScriptError(number, col, f"{item!r} is not a voice or an edit; {hint}write edits as type:value, "
                                           "e.g. emotion:happy (see GET /v1/edits)")
    if not text:
        raise ScriptError(number, len(raw.rstrip()) + 1, "no text to speak after the directives")
    if len(text) > MAX_LINE_CHARS:
        raise ScriptError(number, text_start + 1, f"the line's text is {len(text)} characters; the limit is "
                                                  f"{MAX_LINE_CHARS}")
    plain, tagged, tag_column = _text_and_tags(number, raw, text_start)
    if tagged is not None:
        edits.append(Edit("paralinguistic"))
        columns.append(tag_column)
    if len(edits) > MAX_EDITS_PER_LINE:
        raise ScriptError(number, columns[MAX_EDITS_PER_LINE], f"more than {MAX_EDITS_PER_LINE} edits on one line")
    return SpokenLine(number, voice, plain, tagged, tuple(edits), speed, tuple(columns), voice_col)


def _voice(number: int, col: int, label: str, previous: str | None) -> str:
    if not label or not _BARE.match(label):
        raise ScriptError(number, col, f"voice {label!r} is not a name (letters, digits, _ . -)")
    if previous is not None:
        raise ScriptError(number, col, "a line names one voice")
    return label


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _text_and_tags(number: int, raw: str, start: int) -> tuple[str, str | None, int]:
    """(text without sound tags, text with them or None, column of the first sound tag); an unknown
    or unclosed tag is an error."""
    paralinguistic, language = _tags()
    plain, first_sound, pos = [], 0, start
    for m in re.finditer(r"\[|\]", raw[start:]):
        i = start + m.start()
        if i < pos:
            continue
        if raw[i] == "]":
            raise ScriptError(number, i + 1, "']' without a matching '['")
        end = raw.find("]", i)
        if end < 0:
            raise ScriptError(number, i + 1, "'[' is never closed with ']'")
        tag = raw[i:end + 1]
        if tag in paralinguistic:
            first_sound = first_sound or i + 1
            plain.append(raw[pos:i])
        elif tag in language:
            plain.append(raw[pos:end + 1])
        else:
            raise ScriptError(number, i + 1, f"unknown tag {tag}; sounds: {', '.join(paralinguistic)}; "
                                             "directives go before the text")
        pos = end + 1
    plain.append(raw[pos:])
    text = " ".join("".join(plain).split())
    tagged = " ".join(raw[start:].split()) if first_sound else None
    if not text:
        raise ScriptError(number, start + 1, "a line needs words to speak, not only sound tags")
    return text, tagged, first_sound
