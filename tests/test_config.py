import pytest

from editx.config import EngineConfig, SamplingConfig, resolve_device
from editx.errors import ValidationError


def test_backend_auto_picks_editx_only_with_model_dir(tmp_path):
    assert EngineConfig().resolved_backend == "lite"
    assert EngineConfig(model_dir=tmp_path).resolved_backend == "editx"
    assert EngineConfig(model_dir=str(tmp_path)).model_dir == tmp_path


@pytest.mark.parametrize("kwargs", [{"backend": "gpu"}, {"dtype": "fp8"}, {"flow_steps": 0}, {"quantize": "int3"}])
def test_bad_config_values_name_the_field(kwargs):
    with pytest.raises(ValidationError) as err:
        EngineConfig(**kwargs)
    assert next(iter(kwargs)) in str(err.value)


def test_sampling_validation():
    with pytest.raises(ValidationError, match="top_p"):
        SamplingConfig(top_p=0)
    with pytest.raises(ValidationError, match="max_tokens_per_char"):
        SamplingConfig(max_tokens_per_char=0)


def test_token_guard_scales_with_the_text():
    guard = SamplingConfig(max_tokens_per_char=3.0)
    assert guard.for_text("abcd").max_new_tokens == 12 and guard.for_text("").max_new_tokens == 1
    assert SamplingConfig(max_tokens_per_char=3.0, max_new_tokens=5).for_text("abcd").max_new_tokens == 5
    assert SamplingConfig(max_tokens_per_char=0.5, max_new_tokens=5).for_text("abc").max_new_tokens == 2
    plain = SamplingConfig(max_new_tokens=7)
    assert plain.for_text("a" * 100) is plain


def test_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("EDITX_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("EDITX_THREADS", "3")
    monkeypatch.setenv("EDITX_STREAM_CHUNK_ROWS", "6,12")
    monkeypatch.setenv("EDITX_STREAM_PRIME", "off")
    monkeypatch.setenv("EDITX_SEGMENT_PAUSE_S", "0.5")
    cfg = EngineConfig.from_env(flow_steps=5)
    assert cfg.model_dir == tmp_path and cfg.threads == 3 and cfg.flow_steps == 5
    assert cfg.stream_chunk_rows == (6, 12) and cfg.stream_prime is False and cfg.segment_pause_s == 0.5
    monkeypatch.setenv("EDITX_STREAM_PRIME", "maybe")
    with pytest.raises(ValidationError, match="EDITX_STREAM_PRIME"):
        EngineConfig.from_env()


def test_cuda_request_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ValidationError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
