"""What engine each `editx bench` arm runs: the profiles (`baseline`: the reference system), the
`key=value` overrides of an A/B arm, the generated fixture and the base EngineConfig from the flags."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from editx.errors import ValidationError

log = logging.getLogger(__name__)

# The reference system: no prompt cache (re-encode every request), HF-generate-style LM loop, no
# warm-up, upstream's one-pass flow, float32 (torch's CPU default; a bf16-capable CPU's `auto` is bf16).
PROFILES = {"baseline": "cache=off,lm_loop=naive,warmup=off,offline_prime=off,dtype=float32", "default": "",
            "ours": ""}
FIXTURE_TOKEN_CAP = 100  # random fixture weights rarely pick EOS; 100 mixed ids ~ 2.4 s of audio
_BOOL = {"on": True, "true": True, "yes": True, "1": True, "off": False, "false": False, "no": False, "0": False}
_INT_KEYS = ("threads", "onnx_threads", "flow_steps", "max_batch")
_STR_KEYS = ("lm_loop", "dtype", "device", "backend")
_ROWS_KEYS = ("stream_chunk_rows",)  # a list: flow rows per streamed chunk, "6:24:48"
_SAMPLING_KEYS = {"max_new_tokens": int, "temperature": float, "top_k": int, "top_p": float}
_BOOL_KEYS = ("cache", "warmup", "stream_prime", "offline_prime")
OVERRIDE_KEYS = _BOOL_KEYS + ("quantize",) + _INT_KEYS + _STR_KEYS + _ROWS_KEYS + tuple(_SAMPLING_KEYS)


def parse_overrides(spec: str) -> dict[str, Any]:
    """'key=value,key=value' (or a profile name: baseline, default) → override dict, validated keys."""
    out: dict[str, Any] = {}
    for item in (x.strip() for x in (spec or "").split(",")):
        if not item:
            continue
        if "=" not in item:
            if item not in PROFILES:
                raise ValidationError(f"unknown bench profile {item!r}; use one of {', '.join(PROFILES)} or "
                                      f"key=value with keys {', '.join(OVERRIDE_KEYS)}")
            out.update(parse_overrides(PROFILES[item]))
            continue
        key, value = (s.strip() for s in item.split("=", 1))
        key = key.replace("-", "_")
        if key in _BOOL_KEYS:
            if value.lower() not in _BOOL:
                raise ValidationError(f"{key} must be on or off, got {value!r}")
            out[key] = _BOOL[value.lower()]
        elif key == "quantize":
            out[key] = None if value.lower() in ("none", "off", "fp32", "") else value
        elif key in _INT_KEYS:
            out[key] = _int(key, value)
        elif key in _STR_KEYS:
            out[key] = value
        elif key in _ROWS_KEYS:
            out[key] = tuple(_int(key, v) for v in value.split(":"))
        elif key in _SAMPLING_KEYS:
            out[key] = None if value.lower() == "none" else _SAMPLING_KEYS[key](value)
        else:
            raise ValidationError(f"unknown bench override {key!r}; allowed keys: {', '.join(OVERRIDE_KEYS)}")
    return out


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValidationError(f"{key} must be an integer, got {value!r}") from None


def apply_overrides(config, overrides: dict[str, Any]):
    """EngineConfig with the overrides applied (sampling keys go into config.sampling)."""
    fields = {k: v for k, v in overrides.items() if k not in _SAMPLING_KEYS and k not in ("cache",)}
    if "cache" in overrides:
        fields["cache_enabled"] = overrides["cache"]
    sampling = {k: v for k, v in overrides.items() if k in _SAMPLING_KEYS}
    if sampling:
        fields["sampling"] = replace(config.sampling, **sampling)
    return config.with_(**fields)


def fixture_dir(args) -> Path:
    """The generated fixture for --fixture, written once (a marker file says it is complete)."""
    from editx import fixtures

    root = args.fixtures_dir
    if root is None:
        from editx.config import env_value

        env = env_value("EDITX_CACHE_DIR")
        if env:
            root = env / "fixtures"
        else:
            import platformdirs

            root = Path(platformdirs.user_cache_dir("editx")) / "fixtures"
    path = Path(root) / f"{args.fixture}-seed0"
    marker = path / ".editx-fixture-complete"
    if not marker.is_file():
        log.info("generating the %s fixture under %s (once)", args.fixture, path)
        fixtures.make(path, preset=args.fixture, seed=0)
        marker.write_text(args.fixture)
    return path


def base_config(args):
    from editx.config import EngineConfig, SamplingConfig

    model_dir, fixture = None, None
    if args.backend == "editx":
        model_dir = args.model_dir
        if model_dir is None:
            model_dir, fixture = fixture_dir(args), args.fixture
    cap = args.max_new_tokens
    if cap is None:
        cap = FIXTURE_TOKEN_CAP if fixture else 0
    config = EngineConfig(model_dir=model_dir, backend=args.backend, device=args.device, dtype=args.dtype,
                          quantize=args.quantize, threads=args.threads, onnx_threads=args.onnx_threads,
                          flow_steps=args.flow_steps, max_batch=args.max_batch, warmup=not args.no_warmup,
                          sampling=SamplingConfig(max_new_tokens=cap or None))
    return config, fixture
