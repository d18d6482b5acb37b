"""Plain-words instructions → edit chains (pure, no model), and the speed split that backs OpenAI `speed`."""

import pytest

from editx.lm.prompts import EDIT_OPTIONS, PARALINGUISTIC_TAGS
from editx.pipeline.instructions import InstructionError, parse_instructions, phrasebook, to_edits
from editx.pipeline.phrasings import PHRASES
from editx.pipeline.types import CloneRequest, Edit, PromptAudio, plan_steps, split_speed


def chain(text):
    return [(m.edit_type, m.edit_info, m.iterations) for m in parse_instructions(text)]


@pytest.mark.parametrize("text, expected", [
    ("Speak cheerfully", [("emotion", "happy", 1)]),
    ("whisper it", [("style", "whisper", 1)]),
    ("a bit faster", [("speed", "faster", 1)]),
    ("much faster", [("speed", "more faster", 1)]),
    ("very slow", [("speed", "more slower", 1)]),
    ("用悲伤的语气", [("emotion", "sad", 1)]),
    ("非常生气", [("emotion", "angry", 2)]),
    ("开心一点，然后慢一点", [("emotion", "happy", 1), ("speed", "slower", 1)]),
    ("very sad, then slower", [("emotion", "sad", 2), ("speed", "slower", 1)]),
    ("extremely angry and shout it", [("emotion", "angry", 3), ("style", "shout", 1)]),
    ("slightly sad", [("emotion", "sad", 1)]),
    ("speak like a child, very excited", [("style", "child", 1), ("emotion", "excited", 2)]),
    ("in a news anchor voice", [("style", "news", 1)]),
    ("gently", [("style", "gentle", 1)]),
    ("no emotion", [("emotion", "remove", 1)]),
    ("emotion:happy", [("emotion", "happy", 1)]),  # the 'type:value' form still works
    ("surprised", [("emotion", "surprised", 1)]),  # a bare option value
    ("vad", [("vad", None, 1)]),
    ("Happy happy, HAPPY", [("emotion", "happy", 1)]),  # repeats in a row merge
])
def test_phrasings_map_to_edits_in_order(text, expected):
    assert chain(text) == expected


def test_every_option_is_reachable_by_its_own_name():
    for kind in ("emotion", "style", "speed"):
        for value in EDIT_OPTIONS[kind]:
            if value == "remove":
                continue
            mapped = parse_instructions(value.replace("_", " "))
            assert (mapped[0].edit_type, mapped[0].edit_info) == (kind, value), value
    tags = {p.tag for p in PHRASES if p.tag}
    assert tags == set(PARALINGUISTIC_TAGS)


def test_paralinguistic_tag_goes_into_the_text():
    end, = to_edits(parse_instructions("sigh at the end"), "I am tired.")
    assert (end.edit_type, end.text) == ("paralinguistic", "I am tired.[Sigh]")
    start, = to_edits(parse_instructions("laugh at the start"), "That was great.")
    assert start.text == "[Laughter]That was great."


@pytest.mark.parametrize("text, hint", [("cheerfull", "cheerful"), ("talk in purple", "pure"), ("xyzzy", "")])
def test_nothing_maps_lists_closest(text, hint):
    with pytest.raises(InstructionError) as err:
        parse_instructions(text)
    msg = str(err.value)
    assert "closest" in msg and "GET /v1/edits" in msg and hint in msg


def test_empty_and_too_long():
    assert parse_instructions("") == () and parse_instructions(None) == ()
    with pytest.raises(InstructionError, match="limit"):
        parse_instructions("happy " * 1000)


def test_phrasebook_lists_every_phrase():
    book = phrasebook()
    assert "cheerful" in book["phrasings"]["emotion"]["happy"]
    assert "用悲伤的语气" in book["examples"]
    for ex in book["examples"]:
        assert parse_instructions(ex)
    assert sum(len(v) for g in book["phrasings"].values() for v in g.values()) == len(PHRASES)


def _audio():
    import numpy as np

    return PromptAudio(np.zeros(2400, np.float32) + 0.01, 24000)


def test_chain_runs_in_order_with_iterations():
    req = CloneRequest(_audio(), "hi", "Hello there.", edits=(Edit("emotion", "sad", 2), Edit("speed", "faster")))
    steps = plan_steps(req, native_speed=False)
    assert [(s.op, s.edit_type, s.edit_info) for s in steps] == [
        ("clone", None, None), ("edit", "emotion", "sad"), ("edit", "emotion", "sad"), ("edit", "speed", "faster")]


@pytest.mark.parametrize("speed, native, expected", [
    (1.0, True, (1.0, None, 1.0)), (0.25, True, (0.5, None, 0.5)), (4.0, True, (2.0, None, 2.0)),
    (1.3, True, (1.3, None, 1.0)), (4.0, False, (1.0, "more faster", 4.0 / 1.5)),
    (0.25, False, (1.0, "more slower", 0.25 / 0.67)), (1.2, False, (1.0, "faster", 1.0)),
])
def test_split_speed(speed, native, expected):
    got = split_speed(speed, native)
    assert got[:2] == expected[:2] and got[2] == pytest.approx(expected[2], rel=1e-9)
    clone_rate = got[0]
    assert clone_rate * got[2] == pytest.approx(speed, rel=1e-9) or got[1] is not None


def test_stretch_lands_on_the_last_step():
    req = CloneRequest(_audio(), "hi", "Hello there.", speed=4.0, edits=(Edit("vad"),))
    steps = plan_steps(req, native_speed=True)
    assert [s.stretch for s in steps] == [1.0, 2.0] and steps[0].speed == 2.0


def test_native_speed_range_is_kokoros():
    from editx.lite.kokoro import SPEED_RANGE
    from editx.pipeline.types import NATIVE_SPEED_RANGE

    assert tuple(SPEED_RANGE) == NATIVE_SPEED_RANGE
