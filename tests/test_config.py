import pytest

from editx.config import EngineConfig, SamplingConfig, cpu_flags, cpu_supports_bf16, resolve_device, resolve_dtype
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


def test_every_editx_variable_is_read_through_the_one_table():
    """No module but config.py reads the environment for EDITX_* variables, and every EDITX_* name
    that appears in the package's code is listed in ENV_TABLE (so docs and parsing have one source)."""
    import re
    from pathlib import Path

    import editx
    from editx.config import ENV_TABLE

    root = Path(editx.__file__).parent
    reads = re.compile(r"(os\.environ|getenv)[^\n]*EDITX_")
    names: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        if path.name != "config.py":
            assert not reads.search(text), f"{path.relative_to(root)} reads an EDITX_* variable itself"
        names |= set(re.findall(r"[\"'`$](EDITX_[A-Z0-9_]*[A-Z0-9])\b", text))  # in strings, not identifiers
    assert names - set(ENV_TABLE) == set(), "EDITX_* variables missing from editx.config.ENV_TABLE"


def test_server_settings_and_paths_come_from_the_table(monkeypatch, tmp_path):
    from editx.cache import default_cache_dir
    from editx.server.settings import ServerSettings

    monkeypatch.setenv("EDITX_API_KEYS", " k1, ,k2")
    monkeypatch.setenv("EDITX_CORS_ORIGINS", "http://a,http://b")
    monkeypatch.setenv("EDITX_MAX_REQUEST_BYTES", "1024")
    monkeypatch.setenv("EDITX_MAX_AUDIO_SECONDS", "12.5")
    monkeypatch.setenv("EDITX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("EDITX_CACHE_DIR", str(tmp_path / "cache"))
    s = ServerSettings.from_env(max_text_chars=10)
    assert s.api_keys == frozenset({"k1", "k2"}) and s.cors_origins == ("http://a", "http://b")
    assert s.max_request_bytes == 1024 and s.max_audio_seconds == 12.5 and s.max_text_chars == 10
    assert s.data_dir == tmp_path / "data" and EngineConfig.from_env().max_audio_seconds == 12.5
    assert default_cache_dir() == tmp_path / "cache" / "prompts"
    monkeypatch.setenv("EDITX_MAX_REQUEST_BYTES", "lots")
    with pytest.raises(ValidationError, match="EDITX_MAX_REQUEST_BYTES"):
        ServerSettings.from_env()


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    flags = cpu_flags(info)
    assert "avx512_bf16" in flags and "avx2" in flags  # the first processor's line
    assert cpu_supports_bf16(flags)
    assert not cpu_supports_bf16(frozenset({"avx2", "avx512f", "fma"}))  # AVX-512 alone is not BF16
    assert cpu_supports_bf16(frozenset({"amx_bf16", "amx_tile"}))
    assert cpu_supports_bf16(cpu_flags(_write(tmp_path / "arm", "Features\t: fp asimd bf16 i8mm\n")))
    assert cpu_flags(tmp_path / "missing") == frozenset()


def _write(path, text):
    path.write_text(text)
    return path


def test_auto_dtype_follows_the_hardware():
    import torch

    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu, cpu_bf16=True) == torch.bfloat16
    assert resolve_dtype("auto", cpu, cpu_bf16=False) == torch.float32
    assert resolve_dtype("float32", cpu, cpu_bf16=True) == torch.float32  # fp32 always selectable
    assert resolve_dtype("bfloat16", cpu, cpu_bf16=True) == torch.bfloat16
    # this machine: whatever it is, auto agrees with the detection
    assert resolve_dtype("auto", cpu) == (torch.bfloat16 if cpu_supports_bf16() else torch.float32)


@pytest.mark.parametrize(("dtype", "cpu_bf16", "named"), [("float16", True, "bfloat16, float32"),
                                                          ("float16", False, "supports float32 "),
                                                          ("bfloat16", False, "AVX512-BF16")])
def test_a_dtype_the_cpu_cannot_run_is_refused_naming_what_it_supports(dtype, cpu_bf16, named):
    import torch

    with pytest.raises(ValidationError, match=f"dtype '{dtype}' is not supported on cpu") as err:
        resolve_dtype(dtype, torch.device("cpu"), cpu_bf16=cpu_bf16)
    assert named in str(err.value)


def test_loading_with_a_dtype_the_device_cannot_run_fails_before_any_weights_load(tiny_model_dir):
    from editx.pipeline.stepaudio import StepAudioBackend

    with pytest.raises(ValidationError, match="float16.*not supported on cpu.*supports"):
        StepAudioBackend.load(EngineConfig(model_dir=tiny_model_dir, dtype="float16", device="cpu"))


def test_loading_bfloat16_on_a_cpu_without_it_is_refused(tiny_model_dir, monkeypatch):
    # whatever this machine has, a CPU whose flags lack AVX512-BF16/AMX/Arm BF16 must refuse bfloat16
    import editx.config
    from editx.pipeline.stepaudio import StepAudioBackend

    monkeypatch.setattr(editx.config, "cpu_flags", lambda *a, **k: frozenset({"avx2", "fma"}))
    with pytest.raises(ValidationError, match="bfloat16.*not supported on cpu.*AVX512-BF16.*supports float32"):
        StepAudioBackend.load(EngineConfig(model_dir=tiny_model_dir, dtype="bfloat16", device="cpu"))
