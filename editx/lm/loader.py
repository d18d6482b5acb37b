"""Load the Step1 LM from the official `Step-Audio-EditX/` files: config.json + safetensors.

One path for released weights and fixtures: parse config.json, build the model on the meta device
(no memory), stream each checkpoint tensor through the explicit key map into its parameter (converted
to the target dtype/device one tensor at a time, so peak memory stays about the weights' size), then
check that every parameter was loaded. Optional quantization afterwards: `int8` (torch dynamic
quantization of the Linear layers, lm_head included, CPU) or `bnb8`/`bnb4` (bitsandbytes: CUDA, or the
CPU with bitsandbytes >= 0.50).
Dynamic int8 quantizes activations per call with one scale for the whole input, so under `int8`
batched or chunked runs are close to, but not bit-equal with, single-request runs.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from editx.errors import BackendUnsupportedError, ModelFilesError, ValidationError
from editx.lm.model import Step1Config, Step1ForCausalLM, checkpoint_keys

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
LM_QUANTIZATIONS = (None, "int8", "bnb8", "bnb4")


def read_config(model_dir: Path) -> Step1Config:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise ModelFilesError(f"{path} not found; the model dir must be the Step-Audio-EditX folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFilesError(f"{path} is not valid JSON ({exc}); re-download it") from exc
    return Step1Config.from_hf_config(data)


def weight_files(model_dir: Path) -> dict[Path, list[str] | None]:
    """Shard → keys it should hold (from the index), or {model.safetensors: None} without an index."""
    model_dir = Path(model_dir)
    index = model_dir / INDEX_FILE
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFilesError(f"{index} is not a safetensors index with a weight_map ({exc})") from exc
        files: dict[Path, list[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(model_dir / name, []).append(key)
        missing = [p.name for p in files if not p.is_file()]
        if missing:
            raise ModelFilesError(f"{model_dir} lacks weight shard(s) {', '.join(sorted(missing))} listed in "
                                  f"{INDEX_FILE}; re-download the model")
        return files
    single = model_dir / SINGLE_FILE
    if single.is_file():
        return {single: None}
    raise ModelFilesError(f"{model_dir} has neither {INDEX_FILE} nor {SINGLE_FILE}; "
                          "download the Step-Audio-EditX weights into it")


def _set_param(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name)
    module._parameters[leaf] = nn.Parameter(tensor, requires_grad=False)


# safetensors dtype names → torch dtypes (the subset a Step1 checkpoint can use)
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")  # released: BF16; the loader casts to the engine's dtype


def read_header(path: Path) -> tuple[dict, int]:
    """A safetensors file's tensor table and the byte offset where tensor data starts."""
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            if not 2 <= size <= 100_000_000:
                raise ValueError(f"header length {size}")
            header = json.loads(f.read(size))
        file_size = path.stat().st_size
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ModelFilesError(f"{path} is not a readable safetensors file ({exc}); re-download it") from exc
    if not isinstance(header, dict):
        raise ModelFilesError(f"{path} has a malformed safetensors header; re-download it")
    header.pop("__metadata__", None)
    data_start = 8 + size
    for key, info in header.items():
        try:
            ok = info["dtype"] in _DTYPES and data_start + int(info["data_offsets"][1]) <= file_size
        except (KeyError, TypeError, IndexError, ValueError):
            ok = False
        if not ok:
            raise ModelFilesError(f"{path.name}: tensor {key} has a bad entry or lies past the end of the "
                                  f"file ({file_size} bytes; truncated download?); re-download it")
    return header, data_start


def iter_tensors(path: Path, keys) -> Iterator[tuple[str, torch.Tensor]]:
    """Read tensors one at a time straight into fresh CPU tensors (plain reads, no mmap, so the
    file's pages never add a second copy to the process's memory)."""
    header, data_start = read_header(path)
    with open(path, "rb") as f:
        for key in keys:
            info = header[key]
            begin, end = info["data_offsets"]
            tensor = torch.empty(info["shape"], dtype=_DTYPES[info["dtype"]])
            raw = tensor.reshape(-1).view(torch.uint8).numpy()  # little-endian, as safetensors stores
            if raw.nbytes != end - begin:
                raise ModelFilesError(f"{path.name}: tensor {key} has {end - begin} bytes for shape "
                                      f"{info['shape']}; the file is corrupt, re-download it")
            f.seek(data_start + begin)
            if f.readinto(memoryview(raw)) != raw.nbytes:
                raise ModelFilesError(f"{path.name} ends inside tensor {key}; re-download it")
            yield key, tensor


def plan_state(cfg: Step1Config, headers: dict[Path, tuple[dict, list[str] | None]]) -> dict[Path, list[str]]:
    """Check the checkpoint's key set and shapes against `cfg` from the safetensors headers alone.

    `headers` maps each shard to (its tensor table, the keys the index assigns to it or None).
    Returns the keys to read per shard. Strict both ways, no tensor skipped: a key without a
    parameter, a parameter without a key, a wrong shape, or a config that ties the head next to a
    checkpoint that carries `lm_head.weight` is a ModelFilesError naming the key and the file.
    `editx doctor` runs exactly this on the real headers without reading any weight.
    """
    key_map = checkpoint_keys(cfg)
    with torch.device("meta"):
        expected = {name: tuple(p.shape) for name, p in Step1ForCausalLM(cfg).named_parameters()}
    plan: dict[Path, list[str]] = {}
    seen: dict[str, Path] = {}
    for path, (header, index_keys) in headers.items():
        absent = sorted(set(index_keys or ()) - set(header))
        if absent:
            raise ModelFilesError(f"{path.name} lacks {len(absent)} tensor(s) the index lists, e.g. "
                                  f"{absent[0]}; the shard is from another download: re-download it")
        if index_keys is not None:
            stray = sorted(set(header) - set(index_keys))
            if stray:
                raise ModelFilesError(f"{path.name} holds {len(stray)} tensor(s) {INDEX_FILE} does not assign to "
                                      f"it, e.g. {stray[0]}; the index and the shard disagree: re-download both")
        for key in sorted(header):
            if key in seen:
                raise ModelFilesError(f"tensor {key} is in both {seen[key].name} and {path.name}; re-download")
            seen[key] = path
            name = key_map.get(key)
            if name is None:
                if key == "lm_head.weight":
                    raise ModelFilesError(
                        f"{path.name} carries lm_head.weight but config.json says tie_word_embeddings: true; "
                        "they disagree (the released config has no tie key and an untied head): remove the "
                        "key from config.json or re-download it")
                raise ModelFilesError(f"{path.name} holds tensor {key}, which a Step1 model of this config.json "
                                      "does not have (wrong model or config.json from another model)")
            if header[key]["dtype"] not in FLOAT_DTYPES:
                raise ModelFilesError(f"tensor {key} in {path.name} is {header[key]['dtype']}, not a float "
                                      "tensor; these are not Step1 weights: re-download them")
            shape = tuple(header[key]["shape"])
            if shape != expected[name]:
                raise ModelFilesError(f"tensor {key} in {path.name} has shape {shape}, config.json implies "
                                      f"{expected[name]}: config.json and the weights are from different models")
            plan.setdefault(path, []).append(key)
    missing = sorted(set(key_map) - set(seen))
    if missing:
        raise ModelFilesError(f"the checkpoint lacks {len(missing)} tensor(s), e.g. {missing[0]}"
                              + ("" if missing != ["lm_head.weight"] else " (an untied head: config.json has no "
                                 "tie_word_embeddings: true)") + "; the download is incomplete: re-download it")
    return plan


def read_headers(model_dir: Path) -> dict[Path, tuple[dict, list[str] | None]]:
    """Every shard's safetensors header with the keys the index assigns to it."""
    return {path: (read_header(path)[0], keys) for path, keys in weight_files(model_dir).items()}


def load_state(model: Step1ForCausalLM, model_dir: Path, *, device: torch.device,
               dtype: torch.dtype) -> None:
    """Stream every checkpoint tensor into `model` (built on meta); strict about keys and shapes."""
    key_map = checkpoint_keys(model.config)
    for path, keys in plan_state(model.config, read_headers(model_dir)).items():
        for key, tensor in iter_tensors(path, keys):
            _set_param(model, key_map[key], tensor.to(device=device, dtype=dtype))
            del tensor
    if model.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight


def apply_quantization(model: Step1ForCausalLM, mode: str | None, device: torch.device) -> Step1ForCausalLM:
    """Apply an optional quantization to a loaded model (Linear layers only)."""
    if mode is None:
        return model
    if mode == "int8":
        if device.type != "cpu":
            raise ValidationError("quantize='int8' is CPU dynamic quantization; on CUDA use 'bnb8' or 'bnb4'")
        from torch.ao.quantization import quantize_dynamic

        with warnings.catch_warnings():  # torch marks eager quantization deprecated (moving to torchao)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=UserWarning)
            return quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    if mode in ("bnb8", "bnb4"):
        if device.type not in ("cuda", "cpu"):
            raise ValidationError(f"quantize={mode!r} runs on CUDA or the CPU (bitsandbytes >= 0.50), not {device}")
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise BackendUnsupportedError(
                f"quantize={mode!r} needs bitsandbytes: pip install 'editx[gpu]'") from exc
        _replace_linears(model, bnb, four_bit=mode == "bnb4")
        return model.to(device)
    raise ValidationError(f"LM quantization must be one of {', '.join(map(str, LM_QUANTIZATIONS))}, got {mode!r}")


def _replace_linears(model: nn.Module, bnb, *, four_bit: bool) -> None:
    # Weights are still on the CPU here; bitsandbytes quantizes them when the module moves to its device
    # (CUDA, or the CPU itself with bitsandbytes >= 0.50).
    # lm_head stays in full precision, as HF's BitsAndBytesConfig path (upstream's int8/int4) keeps it.
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear) or child is model.lm_head:
                continue
            if four_bit:
                new = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=False,
                                        compute_dtype=child.weight.dtype, quant_type="nf4")
                new.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4")
            else:
                new = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=False,
                                          has_fp16_weights=False)
                new.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
            setattr(module, child_name, new)


def load_step1(model_dir: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               quantize: str | None = None) -> Step1ForCausalLM:
    """Load `Step-Audio-EditX/` (config.json + safetensors) as an eval-mode Step1ForCausalLM."""
    device = torch.device(device)
    mode = quantize
    if mode not in LM_QUANTIZATIONS:
        raise ValidationError(f"LM quantization must be one of {', '.join(map(str, LM_QUANTIZATIONS))}, "
                              f"got {mode!r}")
    cfg = read_config(model_dir)
    # bitsandbytes quantizes on the move to the device, so those weights are staged on the CPU first.
    stage = torch.device("cpu") if mode in ("bnb8", "bnb4") else device
    with torch.device("meta"):
        model = Step1ForCausalLM(cfg)
    load_state(model, Path(model_dir), device=stage, dtype=dtype)
    model.reset_buffers()
    model.eval()
    model = apply_quantization(model, mode, device)
    log.info("loaded Step1 LM from %s: %d layers, hidden %d, %s on %s%s", model_dir, cfg.num_hidden_layers,
             cfg.hidden_size, str(dtype).removeprefix("torch."), device, f", {mode}" if mode else "")
    return model
