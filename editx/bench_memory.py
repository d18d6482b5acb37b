"""`editx bench --memory`: how much memory the real Step-Audio-EditX needs, per component and precision,
computed from the release's sizes without loading it; and the same formula checked against the RSS
measured while loading a fixture.

Sizes: the LM is built from the released config.json on the meta device (no memory); the flow, HiFT
and Paraformer encoder from their released key/shape lists (editx/assets/release/, copied from
public facts: see its README). Bytes per weight by precision (what editx's loaders produce):
- float32 / bfloat16: every weight at 4 / 2 bytes (ONNX files as they are).
- int8 (torch dynamic quantization, CPU): the LM's Linear weights (lm_head too) at 1 byte plus one
  scale per tensor; everything else float32.
- bnb8 (bitsandbytes LLM.int8): the LM's layer Linears at 1 byte plus a float32 scale per output row;
  lm_head, embedding, norms and the decoder in bfloat16.
- nf4 (bitsandbytes NF4, double-quantized statistics): 0.5 byte per layer-Linear weight plus an 8-bit
  absmax per 64 weights and a float32 per 256 of those; the rest in bfloat16.
Run-time memory beside the weights: the LM's static KV cache (allocated for max_batch rows x
max_length positions once, at the first request), a voice's flow prime, and the largest activations of
an LM prefill chunk and a one-pass flow solve (the attention scores dominate both).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RELEASE = Path(__file__).parent / "assets" / "release"
PRECISIONS = ("float32", "bfloat16", "int8", "bnb8", "nf4")
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit code + 8-bit absmax per 64 + float32 per 256 absmax
GB = 1e9


def release_lm_config():
    from editx.lm.model import Step1Config

    cfg = Step1Config.from_hf_config(json.loads((RELEASE / "step-audio-editx.config.json").read_text()))
    # the released config.json has no tie_word_embeddings key, but the checkpoint carries its own
    # lm_head.weight (release README): count both tensors
    return cfg.with_(tie_word_embeddings=False)


def lm_param_groups(cfg) -> dict[str, int]:
    """Parameter counts of the Step1 LM by role, from the model built on the meta device."""
    import torch

    from editx.lm.model import Step1ForCausalLM

    with torch.device("meta"):
        model = Step1ForCausalLM(cfg)
    groups = {"layer_linear": 0, "lm_head": 0, "embedding": 0, "norms": 0}
    for name, p in model.named_parameters():
        if name == "lm_head.weight":
            groups["lm_head"] += p.numel()
        elif name.endswith("embed_tokens.weight"):
            groups["embedding"] += p.numel()
        elif name.endswith("_proj.weight"):
            groups["layer_linear"] += p.numel()
        else:
            groups["norms"] += p.numel()
    if cfg.tie_word_embeddings:
        groups["lm_head"] = 0  # one tensor
    return groups


def keys_params(path: Path) -> int:
    """Parameters in a {key: shape} JSON list."""
    return sum(math.prod(shape) for shape in json.loads(path.read_text()).values())


def lm_bytes(groups: dict[str, int], precision: str) -> float:
    lin, head, rest = groups["layer_linear"], groups["lm_head"], groups["embedding"] + groups["norms"]
    if precision == "float32":
        return 4 * (lin + head + rest)
    if precision == "bfloat16":
        return 2 * (lin + head + rest)
    if precision == "int8":
        return lin + head + 4 * rest
    if precision == "bnb8":
        return lin + 2 * (head + rest) + 4 * math.sqrt(lin)  # row scales: ~sqrt(weights) per square-ish matrix
    if precision == "nf4":
        return NF4_BYTES * lin + 2 * (head + rest)
    raise ValueError(precision)


def decoder_bytes(params: int, precision: str) -> float:
    """Flow/HiFT/Paraformer weights: never quantized; float32 beside int8 (CPU), bfloat16 beside bnb."""
    return params * (4 if precision in ("float32", "int8") else 2)


def kv_cache_bytes(cfg, *, batch: int, max_len: int, itemsize: int) -> int:
    """The static KV cache: K and V for every layer, batch rows x (max_len + 1 scratch) positions."""
    return 2 * cfg.num_hidden_layers * batch * cfg.num_attention_groups * (max_len + 1) * cfg.head_dim * itemsize


def flow_prime_bytes(est, *, frames: int, steps: int, itemsize: int) -> int:
    """A voice's flow prime: per Euler step and DiT block, keys|values of both CFG rows per frame."""
    return steps * est.depth * 2 * est.num_heads * 2 * est.head_dim * frames * itemsize


def lm_prefill_activation_bytes(cfg, *, chunk: int, context: int, batch: int, itemsize: int) -> int:
    """The largest live tensors of one prefill chunk: the ALiBi bias and the attention scores
    (B, H, chunk, context) each, and the MLP's gate/up activations."""
    scores = batch * cfg.num_attention_heads * chunk * context * itemsize
    mlp = 3 * batch * chunk * cfg.intermediate_size * itemsize
    return 2 * scores + mlp


def flow_activation_bytes(est, *, frames: int, itemsize: int) -> int:
    """The largest live tensors of one DiT forward over `frames` (both CFG rows): the attention
    scores (2, H, T, T) (the math kernel's; fused kernels hold less) and the MLP hidden."""
    scores = 2 * est.num_heads * frames * frames * itemsize
    return scores + 2 * frames * (est.mlp_hidden + 6 * est.hidden_size) * itemsize


def estimator_from_keys(shapes: dict[str, list[int]]):
    """The DiT's sizes from flow.pt key shapes (in_proj, q_norm, block count, MLP width)."""
    from editx.decoder.config import EstimatorConfig

    p = "decoder.estimator."
    hidden, in_ch = shapes[p + "in_proj.weight"]
    head_dim = shapes[p + "blocks.0.attn.q_norm.weight"][0]
    depth = len({k.split(".")[3] for k in shapes if k.startswith(p + "blocks.")})
    mlp = shapes[p + "blocks.0.mlp.fc1.weight"][0] if p + "blocks.0.mlp.fc1.weight" in shapes else 4 * hidden
    return EstimatorConfig(in_channels=in_ch, out_channels=shapes[p + "final_layer.linear.weight"][0],
                           hidden_size=hidden, depth=depth, num_heads=hidden // head_dim, head_dim=head_dim,
                           mlp_ratio=mlp / hidden)


def release_table(*, max_batch: int = 8, max_len: int = 8192, prompt_s: float = 10.0, output_s: float = 30.0,
                  flow_steps: int = 10, prefill_chunk: int = 256) -> dict[str, Any]:
    """Bytes per component and precision for the released model, plus run-time memory."""
    cfg = release_lm_config()
    groups = lm_param_groups(cfg)
    decoder = {"flow": keys_params(RELEASE / "flow.keys.json"), "hift": keys_params(RELEASE / "hift.keys.json"),
               "paraformer_encoder": keys_params(RELEASE / "para.keys.json")}
    est = estimator_from_keys(json.loads((RELEASE / "flow.keys.json").read_text()))
    weights = {p: {"lm": lm_bytes(groups, p), **{k: decoder_bytes(n, p) for k, n in decoder.items()}}
               for p in PRECISIONS}
    for p in PRECISIONS:
        weights[p]["total"] = sum(weights[p].values())
    frames = int(50 * (prompt_s + output_s))
    runtime = {}
    for name, itemsize in (("float32", 4), ("bfloat16", 2)):
        runtime[name] = {
            "kv_cache": kv_cache_bytes(cfg, batch=max_batch, max_len=max_len, itemsize=itemsize),
            "flow_prime_per_voice": flow_prime_bytes(est, frames=int(50 * prompt_s), steps=flow_steps,
                                                     itemsize=itemsize),
            "lm_prefill_activations": lm_prefill_activation_bytes(cfg, chunk=prefill_chunk, context=max_len,
                                                                  batch=1, itemsize=itemsize),
            "flow_activations": flow_activation_bytes(est, frames=frames, itemsize=itemsize),
        }
    return {"lm_params": groups, "decoder_params": decoder, "weights_bytes": weights, "runtime_bytes": runtime,
            "assumptions": {"max_batch": max_batch, "max_length": max_len, "prompt_s": prompt_s, "output_s": output_s,
                            "flow_steps": flow_steps, "prefill_chunk": prefill_chunk,
                            "flow_dit": f"{est.hidden_size} wide, {est.depth} blocks, {est.num_heads} heads of "
                                        f"{est.head_dim} (flow.keys.json)",
                            "onnx": "speech_tokenizer_v1.onnx and campplus.onnx (their sizes are not in the "
                                    "release facts): add their file sizes"}}


def _state_params(path: Path) -> int:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return sum(t.numel() for t in state.values())


def model_dir_weights(model_dir: Path, precision: str = "float32") -> dict[str, float]:
    """The same formula for a model folder in the official layout (a fixture): torch state dicts by
    their shapes, the LM from its config.json on the meta device, ONNX files by their size."""
    from editx.hub import resolve_model_dir
    from editx.lm.loader import read_config

    paths = resolve_model_dir(model_dir)
    out = {"lm": lm_bytes(lm_param_groups(read_config(paths.lm_dir)), precision)}
    for name, f in (("flow", paths.cosyvoice_dir / "flow.pt"), ("hift", paths.cosyvoice_dir / "hift.pt")):
        out[name] = decoder_bytes(_state_params(f), precision)
    para = [f for f in paths.tokenizer_dir.rglob("model.pt")]
    out["paraformer"] = sum(decoder_bytes(_state_params(f), "float32") for f in para)
    out["onnx_files"] = sum(f.stat().st_size for f in paths.root.rglob("*.onnx"))
    out["total"] = sum(out.values())
    return out


def check_against_load(model_dir: Path, load: dict[str, Any]) -> dict[str, Any]:
    """Formula vs the fresh-process load probe (float32): the weights the formula predicts, the bytes
    the loaded backend holds, and the RSS growth while loading."""
    formula = model_dir_weights(model_dir)
    growth = (load.get("rss_after_mb") or 0) - (load.get("rss_before_mb") or 0)
    return {"formula_bytes": formula, "loaded_weight_bytes": load.get("loaded_weight_bytes"),
            "rss_growth_bytes": growth * 2**20, "peak_rss_growth_bytes": load.get("load_delta_mb", 0) * 2**20,
            "rss_growth_minus_formula_bytes": growth * 2**20 - formula["total"],
            "formula_vs_loaded": formula["total"] / load["loaded_weight_bytes"] if load.get("loaded_weight_bytes") else None,
            "rss_growth_vs_formula": growth * 2**20 / formula["total"] if formula["total"] else None}


def markdown(section: dict[str, Any]) -> list[str]:
    """The memory section of bench.md."""
    rel = section["release"]
    w, rt, a = rel["weights_bytes"], rel["runtime_bytes"], rel["assumptions"]
    comps = [k for k in w["float32"] if k != "total"]
    out = ["## memory: the released model (sizes from its config and key lists, meta device)", "",
           "| precision | " + " | ".join(comps) + " | total |", "|---" * (len(comps) + 2) + "|"]
    out += [f"| {p} | " + " | ".join(f"{w[p][c] / GB:.2f}" for c in comps) + f" | **{w[p]['total'] / GB:.2f}** |"
            for p in PRECISIONS]
    out += ["", f"GB of weights. Run-time, beside them (max_batch {a['max_batch']}, max_length {a['max_length']}, "
                f"{a['prompt_s']:g} s prompt, {a['output_s']:g} s output, {a['flow_steps']} Euler steps):", "",
            "| dtype | LM KV cache | flow prime per voice | LM prefill chunk activations | flow activations |",
            "|---|---|---|---|---|"]
    out += [f"| {d} | {v['kv_cache'] / GB:.2f} | {v['flow_prime_per_voice'] / GB:.2f} | "
            f"{v['lm_prefill_activations'] / GB:.2f} | {v['flow_activations'] / GB:.2f} |" for d, v in rt.items()]
    out += ["", f"Not counted: {a['onnx']}.", ""]
    if chk := section.get("check"):
        out += [f"Check on {section.get('model_dir')}: formula {chk['formula_bytes']['total'] / 2**20:.0f} MB of "
                f"float32 weights + ONNX; the loaded backend holds {(chk['loaded_weight_bytes'] or 0) / 2**20:.0f} MB "
                f"(formula / loaded {chk['formula_vs_loaded'] or 0:.3f}); RSS grew {chk['rss_growth_bytes'] / 2**20:.0f} MB "
                f"while loading ({chk['rss_growth_vs_formula'] or 0:.2f}x the formula; "
                f"{chk['rss_growth_minus_formula_bytes'] / 2**20:.0f} MB beyond it: allocator and runtime state, "
                f"the same for any model size), peak growth {chk['peak_rss_growth_bytes'] / 2**20:.0f} MB.", ""]
    return out
