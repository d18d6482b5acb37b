"""Pure sampling rules: upstream's repetition mask, HF-order top-k/top-p, greedy, per-request RNG."""

from __future__ import annotations

import torch

from editx.lm.sampling import apply_top_k, apply_top_p, banned_repeat, make_generator, select_token


def test_repetition_rule_needs_a_full_window():
    assert banned_repeat([5] * 9) is None  # fewer than 10 tokens seen: upstream returns scores untouched
    assert banned_repeat([5] * 10) == 5


def test_repetition_rule_bans_any_repeat_of_the_last_token_inside_the_window():
    # threshold 0.1 over a window of 10: count 1 (no repeat) is 0.1, not > 0.1; count 2 is banned
    assert banned_repeat(list(range(20))) is None
    assert banned_repeat(list(range(10)) + [7]) == 7  # 7 at window index 7 and last
    assert banned_repeat([7] + list(range(20, 29)) + [7]) is None  # first 7 fell out of the window
    assert banned_repeat([7] + list(range(20, 28)) + [7]) == 7  # both 7s inside the last 10


def test_repetition_rule_custom_window_and_threshold():
    assert banned_repeat([1, 2, 1], window=3, threshold=0.5) == 1  # 2/3 > 0.5
    assert banned_repeat([1, 2, 3, 1], window=4, threshold=0.5) is None  # 2/4 is not > 0.5
    assert banned_repeat([1, 1], window=0) is None


def test_greedy_skips_the_banned_token():
    logits = torch.tensor([0.0, 5.0, 4.0, 1.0])
    assert select_token(logits, [0] * 5, temperature=0.0) == 1
    recent = [0, 2, 3, 0, 2, 3, 0, 2, 3, 1, 0, 1]  # last token 1 repeats inside the window
    assert select_token(logits, recent, temperature=0.0) == 2


def test_sampling_never_picks_the_banned_token():
    logits = torch.tensor([0.0, 9.0, 0.0, 0.0])
    recent = [1] * 10
    gen = make_generator(0)
    picks = {select_token(logits, recent, temperature=0.7, top_k=50, generator=gen) for _ in range(200)}
    assert 1 not in picks and picks <= {0, 2, 3}


def test_top_k_keeps_k_best_and_ties_at_the_boundary():
    scores = torch.tensor([1.0, 3.0, 2.0, 3.0, 0.5])
    kept = torch.isfinite(apply_top_k(scores, 2))
    assert kept.tolist() == [False, True, False, True, False]
    kept = torch.isfinite(apply_top_k(torch.tensor([1.0, 2.0, 2.0, 0.0]), 2))
    assert kept.tolist() == [False, True, True, False]
    assert torch.isfinite(apply_top_k(scores, 99)).all()


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = torch.isfinite(apply_top_p(probs.log(), 0.75)).tolist()
    assert kept == [True, True, False, False]
    kept = torch.isfinite(apply_top_p(probs.log(), 0.01)).tolist()
    assert kept == [True, False, False, False]  # the most likely token always stays


def test_top_k_restricts_sampling():
    logits = torch.arange(100, dtype=torch.float32) / 10
    gen = make_generator(1)
    picks = {select_token(logits, [], temperature=1.0, top_k=3, generator=gen) for _ in range(300)}
    assert picks == {97, 98, 99}


def test_per_request_generators_are_independent_and_reproducible():
    logits = torch.zeros(1000)
    first = select_token(logits, [], temperature=0.7, generator=make_generator(42))
    g1, g2 = make_generator(42), make_generator(42)
    seq1 = [select_token(logits, [], temperature=0.7, generator=g1) for _ in range(20)]
    torch.manual_seed(0)  # the global RNG must not matter
    seq2 = [select_token(logits, [], temperature=0.7, generator=g2) for _ in range(20)]
    assert seq1 == seq2 and seq1[0] == first
    seq3 = [select_token(logits, [], temperature=0.7, generator=make_generator(43)) for _ in range(20)]
    assert seq3 != seq1
