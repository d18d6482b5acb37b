"""Streaming decode: upstream's chunked flow path (golden), streamed vs offline bounds, joins, edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_close_rel
from safetensors.torch import load_file

import editx.decoder.streaming as streaming
from editx.audio.features import cosyvoice_mel
from editx.decoder import load_decoder
from editx.decoder.streaming import check_chunk_rows, mixed_for_rows
from editx.errors import ValidationError
from editx.fixtures import decoder as decoder_fixture
from editx.pipeline.splice import max_discontinuity

GOLD = Path(__file__).parent / "golden" / "stream" / "stream_tiny.safetensors"
SPF = 480  # samples per 50 Hz mel frame at 24 kHz
# Measured on the tiny fixture (random weights): streamed mel vs offline mel 39-40 dB, log-mel of the
# streamed audio vs the offline audio about 25 dB (the vocoder's excitation noise is drawn per chunk).
MEL_SNR_DB = 30.0
AUDIO_LOGMEL_SNR_DB = 20.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoder")
    decoder_fixture.write(root, "tiny", seed=0)
    return load_decoder(decoder_fixture.cosyvoice_dir(root))


@pytest.fixture(scope="module")
def gold():
    return load_file(GOLD)


def snr_db(x, ref) -> float:
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(10 * np.log10((ref ** 2).sum() / ((x - ref) ** 2).sum()))


def run_stream(decoder, prompt_mixed, prompt_mel, spk, target, monkeypatch, *, one_by_one=True, **kw):
    """Stream `target` through a DecoderStream; returns (audio pieces, flow mel chunks)."""
    mels = []
    chunk = streaming.flow_chunk

    def capture(*a, **k):
        mel, cache = chunk(*a, **k)
        mels.append(mel.clone())
        return mel, cache

    monkeypatch.setattr(streaming, "flow_chunk", capture)
    st = decoder.open_stream(prompt_mixed, prompt_mel, spk, **kw)
    ids = [int(i) for i in target]
    pieces = []
    if one_by_one:  # as the LM emits them; the last id comes with the end, like upstream's last call
        for i in ids[:-1]:
            pieces += st.push([i])
        pieces.append(st.finish([ids[-1]]))
    else:
        pieces += st.push(ids)
        pieces.append(st.finish())
    monkeypatch.undo()
    return pieces, mels


@pytest.mark.parametrize("name,rows,seed", [("default", (15, 24, 48), 7), ("small", (6, 12, 21), 8)])
def test_matches_upstream_streaming_path(decoder, gold, monkeypatch, name, rows, seed):
    pieces, mels = run_stream(decoder, gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"],
                              gold["target_mixed"].numpy(), monkeypatch, chunk_rows=rows, noise="upstream",
                              generator=torch.Generator().manual_seed(seed))
    assert [m.shape[1] for m in mels] == gold[f"{name}_mel_frames"].tolist()
    assert_close_rel(torch.cat(mels, 1), gold[f"{name}_mel"])
    if f"{name}_audio" in gold:
        assert [p.size for p in pieces] == gold[f"{name}_chunk_sizes"].tolist()
        ref = gold[f"{name}_audio"].float().numpy()
        # the vocoder's rounding happens at its mel input's magnitude, not at its (small) output's
        assert_close_rel(np.concatenate(pieces), ref, scale=float(gold[f"{name}_mel"].abs().max()))


def test_one_last_chunk_encoder_equals_offline_encoder(decoder):
    enc = decoder.flow.encoder
    x = torch.randn(1, 17, enc.cfg.input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        offline = enc(x)
        chunked, cache = enc.forward_chunk(x, None, last=True)
    assert_close_rel(chunked, offline)
    assert cache.rows == 17 and cache.att[0][0].shape[2] == 17 and cache.att[-1][0].shape[2] == 34


def _long_target(rng: np.random.Generator, groups: int) -> np.ndarray:
    ids = []
    for _ in range(groups):
        ids += list(rng.integers(0, 1024, 2)) + list(rng.integers(1024, 5120, 3))
    return np.asarray(ids, dtype=np.int64)


@pytest.mark.parametrize("primed", [False, True], ids=["setup", "primed"])
@pytest.mark.parametrize("rows", [(15, 24, 48), (6, 12, 24)])
def test_streamed_close_to_offline(decoder, gold, monkeypatch, rows, primed):
    pm, mel, spk = gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"]
    target = _long_target(np.random.default_rng(3), 70)  # 210 rows = 8.4 s: several trimmed chunks
    offline_mel = decoder.token2mel(pm, mel, spk, target)
    offline = decoder.mel2wav(offline_mel, generator=torch.Generator().manual_seed(1))
    prime = decoder.prime_stream(pm, mel, spk) if primed else None
    pieces, mels = run_stream(decoder, pm, mel, spk, target, monkeypatch, one_by_one=False, chunk_rows=rows,
                              generator=torch.Generator().manual_seed(1), prime=prime)
    audio = np.concatenate(pieces)
    assert audio.size == offline.size == offline_mel.shape[1] * SPF
    assert snr_db(torch.cat(mels, 1), offline_mel) > MEL_SNR_DB
    assert snr_db(cosyvoice_mel(torch.from_numpy(audio)), cosyvoice_mel(torch.from_numpy(offline))) > AUDIO_LOGMEL_SNR_DB


def test_chunk_joins_have_no_discontinuity_spike(decoder, gold, monkeypatch):
    target = _long_target(np.random.default_rng(4), 40)
    pieces, _ = run_stream(decoder, gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"], target,
                           monkeypatch, one_by_one=False, generator=torch.Generator().manual_seed(2))
    audio = np.concatenate(pieces)
    joins = np.cumsum([p.size for p in pieces])[:-1]
    near = np.zeros(audio.size, bool)
    for j in joins:
        near[max(0, j - 64): j + 64] = True
    steps = np.abs(np.diff(audio))
    at_joins, elsewhere = steps[near[1:]].max(), steps[~near[1:]].max()
    assert len(joins) >= 3 and at_joins <= 1.2 * elsewhere
    assert max_discontinuity(audio) <= 1.2 * elsewhere


def test_few_tokens_and_errors(decoder, gold):
    pm, mel, spk = gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"]
    st = decoder.open_stream(pm, mel, spk)
    assert st.push([3, 9]) == []
    assert st.finish().size == 3 * 2 * SPF  # a partial group decodes as one padded group, as offline
    with pytest.raises(ValidationError, match="finished"):
        st.push([1])
    with pytest.raises(ValidationError, match="no speech tokens"):
        decoder.open_stream(pm, mel, spk).finish()
    for bad in [(), (14,), (3, 24), (15, 0)]:
        with pytest.raises(ValidationError, match="multiples of 3"):
            check_chunk_rows(bad)
    with pytest.raises(ValidationError, match="noise"):
        decoder.open_stream(pm, mel, spk, noise="fresh")
    assert mixed_for_rows(15) == 25 and mixed_for_rows(48) == 80


@pytest.mark.parametrize("groups", [4, 70])
def test_offline_decode_against_the_prime_is_close_to_one_pass(decoder, gold, groups):
    pm, mel, spk = gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"]
    target = _long_target(np.random.default_rng(9), groups)
    exact = decoder.token2mel(pm, mel, spk, target)
    primed = decoder.token2mel_primed(decoder.prime_stream(pm, mel, spk), target)
    assert primed.shape == exact.shape
    assert snr_db(primed, exact) > MEL_SNR_DB
    with pytest.raises(ValidationError, match="non-empty"):
        decoder.token2mel_primed(decoder.prime_stream(pm, mel, spk), target[:0])


def test_offline_prime_is_inside_the_models_own_seed_variation(decoder, gold):
    """Why offline_prime is the default: decoding against the voice's prime moves the mel and the
    audio less than a different start-noise seed moves the exact one-pass output."""
    from editx.decoder.flow import make_noise

    pm, mel, spk = gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"]
    target = _long_target(np.random.default_rng(12), 20)
    exact = decoder.token2mel(pm, mel, spk, target)
    other_seed = decoder.token2mel(pm, mel, spk, target, noise=make_noise(1))
    primed = decoder.token2mel_primed(decoder.prime_stream(pm, mel, spk), target)
    assert snr_db(primed, exact) > snr_db(other_seed, exact) + 20  # measured: 71 dB vs -2.5 dB

    def logmel(m):
        return cosyvoice_mel(torch.from_numpy(decoder.mel2wav(m, generator=torch.Generator().manual_seed(5))))

    ref = logmel(exact)
    assert snr_db(logmel(primed), ref) > snr_db(logmel(other_seed), ref) + 3  # measured: 33 dB vs 19 dB


def test_prime_is_reusable_and_checked(decoder, gold, monkeypatch):
    pm, mel, spk = gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"]
    prime = decoder.prime_stream(pm, mel, spk)
    lookahead = decoder.flow.cfg.encoder.pre_lookahead_len
    rows = decoder.flow_tokens(pm).shape[0]
    assert prime.cache.prompt_frames == 2 * (rows - lookahead) and prime.tail_cond.shape[-1] == 2 * lookahead
    assert prime.nbytes > 0
    target = _long_target(np.random.default_rng(6), 30)
    runs = [run_stream(decoder, pm, mel, spk, target, monkeypatch, chunk_rows=(6, 12), prime=prime,
                       generator=torch.Generator().manual_seed(4)) for _ in range(2)]
    np.testing.assert_array_equal(np.concatenate(runs[0][0]), np.concatenate(runs[1][0]))  # the prime is not mutated
    # the first chunk carries the prompt's tail rows: the same ids give first audio as without a prime
    st = decoder.open_stream(pm, mel, spk, chunk_rows=(6, 12), prime=prime)
    ids = target.tolist()
    first = next(i for i in range(len(ids)) if st.push([ids[i]]))
    assert first + 1 == mixed_for_rows(6) + mixed_for_rows(3)
    with pytest.raises(ValidationError, match="Euler steps"):
        decoder.open_stream(pm, mel, spk, n_steps=5, prime=prime)
    with pytest.raises(ValidationError, match="no speech tokens"):
        decoder.open_stream(pm, mel, spk, prime=prime).finish()
    assert decoder.prime_stream(pm[:5], mel[:6], spk) is None  # 3 rows: nothing left before the lookahead
    short = decoder.prime_stream(pm[:10], mel[:12], spk)  # 6 rows: the smallest prime
    audio = decoder.open_stream(pm[:10], mel[:12], spk, prime=short).finish(target[:20].tolist())
    assert audio.size == 12 * 2 * SPF


def test_first_audio_needs_first_chunk_plus_lookahead(decoder, gold):
    st = decoder.open_stream(gold["prompt_mixed"].numpy(), gold["prompt_mel"], gold["spk"], chunk_rows=(6, 12))
    ids = _long_target(np.random.default_rng(5), 12).tolist()
    first = next(i for i in range(len(ids)) if st.push([ids[i]]))
    assert first + 1 == mixed_for_rows(6) + mixed_for_rows(3)  # 6 rows + 3 lookahead rows = 15 ids


# --- the Engine: chunks while the LM generates, cancellation, iterated requests ------------------

STREAM_TEXT = "this is a test of streaming"  # with seed 0 the tiny LM speaks ~80 tokens before EOS
ENGINE_LOGMEL_SNR_DB = 18.0  # streamed vs offline Engine output (same LM tokens); measured 23.7 dB


def _stream_request(seed: int = 0, **kw):
    from conftest import speechlike

    from editx.config import SamplingConfig
    from editx.pipeline.types import CloneRequest

    return CloneRequest(speechlike(), "hello world", STREAM_TEXT, seed=seed,
                        sampling=SamplingConfig(max_new_tokens=200), **kw)


def _submit_streaming(eng, req):
    chunks = []
    result = eng.submit(req, emit=chunks.append).result(timeout=300)
    return result, chunks


def _logmel_snr(a: np.ndarray, b: np.ndarray) -> float:
    return snr_db(cosyvoice_mel(torch.from_numpy(a)), cosyvoice_mel(torch.from_numpy(b)))


@pytest.mark.slow
def test_engine_streams_chunks_while_the_lm_generates(make_engine):
    eng = make_engine(cache=False, stream_chunk_rows=(6, 12, 24))
    req = _stream_request()
    offline = eng.run(req)
    streamed, chunks = _submit_streaming(eng, req)
    assert offline.lm_tokens >= 60 and streamed.lm_tokens == offline.lm_tokens  # same tokens: own vocoder RNG
    assert len(chunks) >= 4 and [c.index for c in chunks] == list(range(len(chunks)))
    assert [c.final for c in chunks] == [False] * (len(chunks) - 1) + [True]
    audio = np.concatenate([c.samples for c in chunks])
    np.testing.assert_array_equal(audio, streamed.audio)
    assert audio.size == offline.audio.size
    snr = _logmel_snr(audio, offline.audio)
    print(f"streamed vs offline (engine, tiny): log-mel SNR {snr:.1f} dB, {len(chunks)} chunks")
    assert snr > ENGINE_LOGMEL_SNR_DB
    tl = streamed.timeline
    lm = next(s for s in tl["stages"] if s["name"] == "lm_decode")
    assert tl["ttfa_s"] is not None and tl["ttfa_s"] < lm["start_s"] + lm["duration_s"]  # audio before the LM ended
    names = [s["name"] for s in tl["stages"]]
    assert names.count("flow_prime") == 1 and names.count("flow") >= 4 and names.count("vocoder") >= 4
    assert "flow_setup" not in names  # the prime replaces upstream's per-request setup
    assert offline.timeline["ttfa_s"] is None
    assert [s["name"] for s in offline.timeline["stages"]].count("flow") == 1


@pytest.mark.slow
def test_voice_prime_is_cached_and_matches_the_per_request_setup(make_engine):
    eng = make_engine(stream_chunk_rows=(6, 12, 24))
    first, _ = _submit_streaming(eng, _stream_request())
    second, chunks = _submit_streaming(eng, _stream_request())
    assert first.timeline["cache"]["flow_prime"] == "miss"
    assert second.timeline["cache"]["flow_prime"] == "memory"
    assert [s["name"] for s in second.timeline["stages"]].count("flow_prime") == 0  # no prompt work at all
    np.testing.assert_array_equal(second.audio, first.audio)  # a shared prime is never changed by a stream
    # upstream's path: the setup per request, with the first rows as the prompt's lookahead
    upstream, _ = _submit_streaming(make_engine(stream_chunk_rows=(6, 12, 24), stream_prime=False), _stream_request())
    names = [s["name"] for s in upstream.timeline["stages"]]
    assert names.count("flow_setup") == 1 and "flow_prime" not in names
    assert upstream.lm_tokens == second.lm_tokens and upstream.audio.size == second.audio.size
    assert _logmel_snr(second.audio, upstream.audio) > ENGINE_LOGMEL_SNR_DB


@pytest.mark.slow
def test_offline_prime_reuses_the_voice_prime_and_stays_close(make_engine):
    exact = make_engine(cache=False, offline_prime=False).run(_stream_request())
    (flow,) = [s for s in exact.timeline["stages"] if s["name"] == "flow"]
    assert not flow["primed"]  # the exact one pass is one switch away
    eng = make_engine(offline_prime=True)
    first, second = eng.run(_stream_request()), eng.run(_stream_request())
    assert first.timeline["cache"]["flow_prime"] == "miss" and second.timeline["cache"]["flow_prime"] == "memory"
    (flow,) = [s for s in second.timeline["stages"] if s["name"] == "flow"]
    assert flow["primed"] and "flow_prime" not in [s["name"] for s in second.timeline["stages"]]
    np.testing.assert_array_equal(first.audio, second.audio)
    assert second.lm_tokens == exact.lm_tokens and second.audio.size == exact.audio.size
    assert _logmel_snr(second.audio, exact.audio) > ENGINE_LOGMEL_SNR_DB


@pytest.mark.slow
def test_a_stream_that_cannot_start_fails_alone(make_engine, monkeypatch):
    import threading

    eng = make_engine(cache=False)

    def broken(*_a, **_k):
        raise MemoryError("no room for the prime")

    monkeypatch.setattr(eng.backend.decoder, "prime_stream", broken)
    gate = threading.Event()
    eng._q.call(gate.wait)  # hold the worker: both requests go in one round
    streamed = eng.submit(_stream_request(), emit=lambda _c: None)
    offline = eng.submit(_stream_request(seed=1))
    gate.set()
    with pytest.raises(MemoryError, match="prime"):
        streamed.result(timeout=300)
    assert offline.result(timeout=300).audio.size > 0  # its batch mate is unaffected


@pytest.mark.slow
def test_iterated_request_streams_only_its_last_round(make_engine):
    from conftest import speechlike

    from editx.config import SamplingConfig
    from editx.pipeline.types import EditRequest

    eng = make_engine(cache=False)
    req = EditRequest(speechlike(seed=3), "hello world", "style", "whisper", iterations=2, seed=7,
                      sampling=SamplingConfig(max_new_tokens=60))
    result, chunks = _submit_streaming(eng, req)
    prefills = [s for s in result.timeline["stages"] if s["name"] == "lm_prefill"]
    assert len(prefills) == 2 and chunks
    assert result.timeline["ttfa_s"] >= prefills[1]["start_s"]
    np.testing.assert_array_equal(np.concatenate([c.samples for c in chunks]), result.audio)


@pytest.mark.slow
def test_cancelling_mid_stream_frees_the_engine(make_engine):
    from editx.errors import CancelledError

    eng = make_engine(cache=False, stream_chunk_rows=(6, 12, 24))
    got = []

    def consumer_leaves(chunk):
        got.append(chunk)
        fut.job.cancelled.set()  # the consumer goes away after its first chunk

    fut = eng.submit(_stream_request(), emit=consumer_leaves)
    with pytest.raises(CancelledError):
        fut.result(timeout=300)
    assert len(got) == 1 and not got[0].final  # the work stopped at the next token
    # closing Engine.stream's iterator cancels the same way
    it = eng.stream(_stream_request())
    assert not next(it).final
    it.close()
    after = eng.run(_stream_request(seed=1))  # served at once, alone in its LM batch
    assert after.audio.size > 0
    assert all(s.get("batch") == 1 for s in after.timeline["stages"] if s["name"] in ("lm_prefill", "lm_decode"))
