import numpy as np
import pytest

from editx.errors import ValidationError
from editx.pipeline.types import PromptAudio
from editx.server.voices import SQLiteVoiceStore, UnknownVoiceError


def _audio(seed=0, sr=16000):
    return PromptAudio(np.random.default_rng(seed).uniform(-0.5, 0.5, sr).astype(np.float32), sr)


def test_add_get_list_delete_roundtrip_is_bit_exact(tmp_path):
    store = SQLiteVoiceStore(tmp_path)
    a = _audio()
    v = store.add("../../etc/passwd", "hello there", a)
    assert v.id.startswith("voice_") and "/" not in v.id
    assert store.get(v.id).prompt_text == "hello there"
    back = store.audio(v.id)
    assert back.sample_rate == a.sample_rate and np.array_equal(back.samples, a.samples)
    # a second store on the same dir (a restart, or another process) sees it
    assert [x.id for x in SQLiteVoiceStore(tmp_path).list()] == [v.id]
    store.delete(v.id)
    assert store.list() == []
    with pytest.raises(UnknownVoiceError):
        store.audio(v.id)


@pytest.mark.parametrize("bad", ["../x", "voice_zzzzzzzzzzzzzzzz", "", "voice_0123456789abcdef/.."])
def test_ids_that_are_not_ours_are_unknown_not_paths(tmp_path, bad):
    with pytest.raises(UnknownVoiceError, match="unknown voice"):
        SQLiteVoiceStore(tmp_path).get(bad)


def test_transcript_required(tmp_path):
    with pytest.raises(ValidationError, match="prompt_text"):
        SQLiteVoiceStore(tmp_path).add("x", "  ", _audio())
