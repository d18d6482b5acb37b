"""bfloat16 (the default on CPUs with native bf16, and on CUDA) against the float32 path the goldens
pin: flow mel and audio log-mel SNR, LM tokens. Loaded through the loaders directly, so this runs on
any CPU (emulated where bf16 is not native)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from editx.audio.features import cosyvoice_mel
from editx.config import SamplingConfig
from editx.decoder import load_decoder
from editx.fixtures import decoder as decoder_fixture
from editx.fixtures import lm as lm_fixture
from editx.lm.generate import generate, sequence_logits
from editx.lm.loader import load_step1

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# bf16 keeps 8 mantissa bits (relative rounding 2^-9 per value): each op is ~50 dB clean; ten Euler
# steps through the DiT measured 39-40 dB on the mel (a 1% relative error, as the issue saw on the
# small fixture) and 27-30 dB on the audio's log-mel.
FLOW_MEL_SNR_DB = 30.0
AUDIO_LOGMEL_SNR_DB = 20.0


def snr_db(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10((ref ** 2).sum() / ((x - ref) ** 2).sum()))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bf16")
    decoder_fixture.write(root, "tiny", seed=0)
    lm_fixture.write(root, "tiny", 0)
    return root


def test_bf16_flow_and_audio_stay_close_to_float32(root):
    d32 = load_decoder(decoder_fixture.cosyvoice_dir(root))
    d16 = load_decoder(decoder_fixture.cosyvoice_dir(root), dtype="bfloat16")
    rng = np.random.default_rng(0)
    pm, spk = rng.integers(0, 5120, 100), torch.randn(192, generator=torch.Generator().manual_seed(0))
    mel = torch.from_numpy(rng.normal(-5, 2, (120, 80))).float()
    target = rng.integers(0, 5120, 100)
    m32, m16 = d32.token2mel(pm, mel, spk, target), d16.token2mel(pm, mel, spk, target)
    assert m16.dtype == torch.bfloat16 and m16.shape == m32.shape
    assert snr_db(m16.float(), m32) > FLOW_MEL_SNR_DB
    a32 = d32.mel2wav(m32, generator=torch.Generator().manual_seed(1))
    a16 = d16.mel2wav(m16, generator=torch.Generator().manual_seed(1))
    assert snr_db(cosyvoice_mel(torch.from_numpy(a16)), cosyvoice_mel(torch.from_numpy(a32))) > AUDIO_LOGMEL_SNR_DB


def test_bf16_lm_picks_the_float32_tokens_wherever_float32_is_not_a_near_tie(root):
    r32 = load_step1(root / lm_fixture.LM_DIR)
    r16 = load_step1(root / lm_fixture.LM_DIR, dtype=torch.bfloat16)
    checked = 0
    for seed in range(3):
        g = torch.Generator().manual_seed(seed)
        prompt = ([1, 4] + torch.randint(100, 60000, (20,), generator=g).tolist() + [3, 4]
                  + (65536 + torch.randint(0, 5120, (30,), generator=g)).tolist())
        greedy = SamplingConfig(temperature=0.0, max_length=len(prompt) + 17, repetition_window=0)
        tokens32, tokens16 = generate(r32, [prompt], sampling=greedy)[0], generate(r16, [prompt], sampling=greedy)[0]
        assert tokens16[0] == tokens32[0]  # the first step always agrees on this fixture
        # teacher-forced on the float32 sequence: bf16's choice may differ only where float32's best two
        # logits are closer than bf16's own logit error (random fixture weights make many near ties)
        seq = prompt + tokens32
        l32, l16 = sequence_logits(r32, seq)[len(prompt) - 1:-1], sequence_logits(r16, seq)[len(prompt) - 1:-1]
        err = (l16 - l32).abs().max(dim=-1).values  # per position
        top2 = l32.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 2 * err
        assert torch.equal(l16.argmax(-1)[clear], l32.argmax(-1)[clear])
        assert torch.equal(l32.argmax(-1), torch.tensor(tokens32))
        checked += int(clear.sum())
    assert checked >= 12  # the check covered real decisions, not only near ties
