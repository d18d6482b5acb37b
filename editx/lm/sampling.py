"""Pure next-token selection for the Step1 LM, following upstream's Hugging Face `generate` call.

Upstream (Step-Audio-EditX `tts.py`, transformers 4.53.3 pinned in its requirements.txt) calls
`llm.generate(..., temperature=0.7, do_sample=True, logits_processor=[RepetitionAwareLogitsProcessor()])`
and sets no top_k/top_p. HF then builds its processors from `GenerationConfig`, whose `top_k`
defaults to 50 (checked in transformers 4.53.3: `GenerationConfig().top_k == 50`, and
`_get_logits_processor` appends `TopKLogitsWarper` whenever `do_sample` and `top_k != 0`; transformers
5.x changed that default to None, which upstream's pin does not see). We found no generation config in
the model repo overriding it, so upstream sampling is, in order: repetition mask → temperature 0.7 →
top-k 50 → softmax → multinomial. `UPSTREAM_TOP_K` is that 50; our goldens reproduce HF's seeded
samples token for token with it.

Each step takes fp32 logits for one request, its recent tokens (prompt included: upstream's window
runs over the whole `input_ids`) and its own `torch.Generator`, so concurrent requests never share
random state and a seed reproduces a request exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

UPSTREAM_TEMPERATURE = 0.7
UPSTREAM_TOP_K = 50  # HF GenerationConfig default, applied silently upstream (see module docstring)
REPETITION_WINDOW = 10  # RepetitionAwareLogitsProcessor: window_size
REPETITION_THRESHOLD = 0.1  # RepetitionAwareLogitsProcessor: threshold


def banned_repeat(recent: Sequence[int], window: int = REPETITION_WINDOW,
                  threshold: float = REPETITION_THRESHOLD) -> int | None:
    """Upstream's repetition rule: the token to forbid next, or None.

    With at least `window` tokens seen, if the last token makes up more than `threshold` of the last
    `window` tokens (count / window > threshold; with 10 and 0.1, any repeat inside the window), that
    token gets -inf. Fewer than `window` tokens: no rule.
    """
    if window <= 0 or len(recent) < window:
        return None
    tail = recent[-window:]
    last = tail[-1]
    count = sum(1 for t in tail if t == last)
    return int(last) if count / window > threshold else None


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the scores >= the k-th largest (ties at the boundary kept, as HF's TopKLogitsWarper)."""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def apply_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter with HF's TopPLogitsWarper boundary: drop the low tail whose mass <= 1 - p."""
    ordered, order = torch.sort(scores, descending=False)
    tail_mass = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = tail_mass <= (1.0 - p)
    drop[..., -1:] = False  # always keep the most likely token
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def select_token(logits: torch.Tensor, recent: Sequence[int], *, temperature: float, top_k: int = 0,
                 top_p: float = 1.0, generator: torch.Generator | None = None,
                 repetition_window: int = REPETITION_WINDOW,
                 repetition_threshold: float = REPETITION_THRESHOLD) -> int:
    """One request's next token from its fp32 logits (V,). temperature 0 → greedy (argmax after the
    repetition mask, as HF greedy search with the same processor); otherwise HF's sampling order."""
    scores = logits.float().clone()
    banned = banned_repeat(recent, repetition_window, repetition_threshold)
    if banned is not None and 0 <= banned < scores.shape[-1]:
        scores[banned] = float("-inf")
    if temperature == 0.0:
        return int(torch.argmax(scores))
    if temperature != 1.0:
        scores = scores / temperature
    if top_k > 0:
        scores = apply_top_k(scores, top_k)
    if top_p < 1.0:
        scores = apply_top_p(scores, top_p)
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None) -> torch.Generator:
    """A private CPU RNG for one request (a random seed when None); the decode loop samples on the CPU."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen
