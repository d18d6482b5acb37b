"""The benchmark baseline LM loop: decode the way upstream's Hugging Face `generate` does, one request
at a time, with our sampling rule so a seed picks the same tokens as `DecodeSession`.

The forward passes are `editx.lm.throughput._hf_style_forward`: a concatenating K/V cache
(`DynamicCache`), K/V repeated to every head, the full ALiBi matrix rebuilt each step, and logits for
every prompt position at prefill. Token selection is `editx.lm.sampling.select_token` with the same
repetition window (seeded with the prompt's tail), temperature, top-k/top-p and per-request generator,
on CPU logits; stopping follows upstream (EOS or prompt + generated reaching `max_length`, the last
token dropped) plus our optional `max_new_tokens` cap, exactly as `DecodeSession._advance` does.
Used only when `EngineConfig.lm_loop == "naive"` (the benchmark's `baseline` profile).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from editx.config import SamplingConfig
from editx.errors import ValidationError
from editx.lm.sampling import select_token
from editx.lm.throughput import _hf_style_forward


@torch.inference_mode()
def generate_naive(model, prompt: Sequence[int], *, sampling: SamplingConfig | None = None,
                   generator: torch.Generator | None = None, eos_id: int | None = None) -> list[int]:
    """Generated LM ids for one prompt (prompt and dropped last token excluded), HF-generate style."""
    sampling = sampling or SamplingConfig()
    eos = model.config.eos_token_id if eos_id is None else eos_id
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValidationError("the LM prompt is empty")
    if len(prompt) >= sampling.max_length:
        raise ValidationError(f"the LM prompt has {len(prompt)} tokens, which leaves nothing to generate "
                              f"under max_length {sampling.max_length}; use a shorter prompt audio or text")
    window = sampling.repetition_window
    recent = prompt[-window:] if window > 0 else []
    past: list = [None] * model.config.num_hidden_layers
    tokens = torch.tensor([prompt], dtype=torch.int64, device=model.device)  # (1, T): the whole prompt
    emitted: list[int] = []
    n_generated = 0
    while True:
        logits = _hf_style_forward(model, tokens, past)[0, -1].cpu()  # (V,) fp32; HF keeps all positions
        token = select_token(logits, recent, temperature=sampling.temperature, top_k=sampling.top_k,
                             top_p=sampling.top_p, generator=generator, repetition_window=window,
                             repetition_threshold=sampling.repetition_threshold)
        n_generated += 1
        if window > 0:
            recent = (recent + [token])[-window:]
        if token == eos or len(prompt) + n_generated >= sampling.max_length:
            return emitted  # upstream drops the last generated token (EOS or the one at the cap)
        emitted.append(token)
        if sampling.max_new_tokens is not None and len(emitted) >= sampling.max_new_tokens:
            return emitted
        tokens = torch.tensor([[token]], dtype=torch.int64, device=model.device)  # (1, 1)
