"""CosyVoice flow matching for Step-Audio-EditX: token encoder + DiT estimator + Euler solver with CFG.

Follows stepvocoder/cosyvoice2/flow/{flow.py, flow_matching.py} (`CausalMaskedDiffWithXvec.inference`,
`CausalConditionalCFM.forward/solve_euler`) and the `token2wav_nonstream` glue in cli/cosyvoice.py:
tokens are [prompt ; target] flow rows, the prompt mel is nearest-resized to 2 frames per prompt row
and conditions the first frames, the ODE starts from a prefix of a fixed noise buffer and the prompt
frames are dropped from the result.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from editx.decoder.config import FlowConfig
from editx.decoder.conformer import TokenEncoder
from editx.decoder.dit import DiT
from editx.errors import ModelFilesError, ValidationError, name_some
from editx.torchfile import load_torch_file

log = logging.getLogger(__name__)

FLOW_FILE = "flow.pt"
NOISE_FRAMES = 50 * 600  # upstream's fixed buffer: 600 s of 50 Hz mel frames
DEFAULT_NOISE_SEED = 0


def cosine_t_span(n_steps: int, *, device: torch.device | None = None,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n_steps+1,) times 1 - cos(pi/2 * linspace(0, 1)): small steps near the noise end."""
    t = torch.linspace(0, 1, n_steps + 1, device=device, dtype=dtype)
    return 1 - torch.cos(t * 0.5 * torch.pi)


def guided_velocity(estimator: DiT, x: torch.Tensor, t: torch.Tensor, mu_in: torch.Tensor,
                    spk_in: torch.Tensor, cond_in: torch.Tensor, cfg_rate: float) -> torch.Tensor:
    """(1+w)·v(x|cond) − w·v(x|∅), both halves in one batch-2 forward; *_in are [cond ; zeros]."""
    v = estimator(torch.cat([x, x], dim=0), t, mu_in, spk_in, cond_in)
    v_cond, v_uncond = v.chunk(2, dim=0)
    return (1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond


def solve_euler(estimator: DiT, noise: torch.Tensor, mu: torch.Tensor, spk: torch.Tensor, cond: torch.Tensor,
                *, n_steps: int = 10, cfg_rate: float = 0.7) -> torch.Tensor:
    """Integrate dx/dt = guided velocity from t=0 (noise) to t=1 on the cosine schedule; (1, 80, T)."""
    # noise, mu, cond (1, 80, T); spk (1, 80)
    t_span = cosine_t_span(n_steps, device=mu.device, dtype=mu.dtype)
    mu_in = torch.cat([mu, torch.zeros_like(mu)], dim=0)
    spk_in = torch.cat([spk, torch.zeros_like(spk)], dim=0)
    cond_in = torch.cat([cond, torch.zeros_like(cond)], dim=0)
    x = noise
    # Like upstream, t accumulates dt and each dt is measured from the accumulated t.
    t, dt = t_span[:1], t_span[1] - t_span[0]
    for step in range(1, n_steps + 1):
        x = x + dt * guided_velocity(estimator, x, t, mu_in, spk_in, cond_in, cfg_rate)
        t = t + dt
        if step < n_steps:
            dt = t_span[step + 1] - t
    return x


def make_noise(seed: int = DEFAULT_NOISE_SEED, channels: int = 80, frames: int = NOISE_FRAMES) -> torch.Tensor:
    """The fixed start-noise buffer (1, channels, frames), float32, drawn once from `seed`."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((1, channels, frames), generator=gen, dtype=torch.float32)


class DualCodebookEmbedding(nn.Module):
    """One table for both columns; the two lookups are concatenated: (B, T, 2) → (B, T, 2*dim)."""

    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        # an explicit (uninitialised) table: nn.Embedding's own init on the meta device imports torch._dynamo
        self.embedding = nn.Embedding(vocab, dim, _weight=torch.empty(vocab, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens).flatten(-2)


class CosyVoiceFlow(nn.Module):
    """Flow rows + prompt mel + speaker x-vector → mel frames (CausalMaskedDiffWithXvec)."""

    def __init__(self, cfg: FlowConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_embedding = DualCodebookEmbedding(cfg.embed_vocab_size, cfg.embed_dim)
        self.spk_embed_affine_layer = nn.Linear(cfg.spk_embed_dim, cfg.output_size)
        self.encoder = TokenEncoder(cfg.encoder)
        self.encoder_proj = nn.Linear(cfg.encoder.output_size, cfg.output_size)
        self.estimator = DiT(cfg.estimator)
        self.rand_noise: torch.Tensor | None = None  # set by the loader (`set_noise`)

    def set_noise(self, noise: torch.Tensor) -> None:
        self.rand_noise = noise.to(device=self.encoder_proj.weight.device, dtype=self.encoder_proj.weight.dtype)

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Flow rows (1, T, 2) int64 → mu (1, 80, up_rate*T)."""
        h = self.encoder(self.input_embedding(tokens.clamp(min=0)))
        return self.encoder_proj(h).transpose(1, 2)

    def speaker(self, spk_emb: torch.Tensor) -> torch.Tensor:
        """x-vector (1, 192) → (1, 80): L2-normalised, then projected."""
        return self.spk_embed_affine_layer(F.normalize(spk_emb, dim=1))

    @torch.inference_mode()
    def inference(self, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
                  target_tokens: torch.Tensor, *, n_steps: int = 10, noise: torch.Tensor | None = None,
                  return_mu: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Mel (80, 2*target rows) for target flow rows, in the voice of the prompt.

        prompt_tokens (Tp, 2), target_tokens (Tt, 2) int64 flow rows; prompt_mel (Tm, 80) at any
        length (resized to 2*Tp frames); spk_emb (192,). `noise` (1, 80, >=total frames) replaces the
        fixed buffer. With `return_mu`, also the encoder output (80, total frames).
        """
        job = self.prepare(prompt_tokens, prompt_mel, spk_emb, target_tokens, noise=noise)
        x = solve_euler(self.estimator, job.noise, job.mu, job.spk, job.cond, n_steps=n_steps,
                        cfg_rate=self.cfg.cfg_rate)
        out = x[0, :, job.keep:]
        return (out, job.mu[0]) if return_mu else out

    @torch.inference_mode()
    def prepare(self, prompt_tokens: torch.Tensor, prompt_mel: torch.Tensor, spk_emb: torch.Tensor,
                target_tokens: torch.Tensor, *, noise: torch.Tensor | None = None) -> FlowJob:
        """Everything of `inference` before the Euler solve (checks, encoder, condition, noise), as
        a FlowJob for `solve_euler` or the batched solve of editx.decoder.batch."""
        w = self.encoder_proj.weight
        if prompt_tokens.ndim != 2 or target_tokens.ndim != 2 or target_tokens.shape[0] == 0:
            raise ValidationError("flow tokens must be non-empty (rows, 2) tensors (see editx.decoder.tokens)")
        if prompt_mel.ndim != 2 or prompt_mel.shape[1] != self.cfg.output_size or prompt_mel.shape[0] == 0:
            raise ValidationError(f"prompt mel must be (frames, {self.cfg.output_size}), got {tuple(prompt_mel.shape)}")
        tokens = torch.cat([prompt_tokens, target_tokens]).to(w.device, torch.long).unsqueeze(0)  # (1, T, 2)
        prompt_frames = self.cfg.up_rate * prompt_tokens.shape[0]
        total = self.cfg.up_rate * tokens.shape[1]
        if noise is None:
            if self.rand_noise is None:
                raise ValidationError("the flow has no noise buffer; load it with load_flow()")
            noise = self.rand_noise
        if noise.shape[-1] < total:
            raise ValidationError(f"{total} mel frames exceed the {noise.shape[-1]}-frame noise buffer "
                                  f"({noise.shape[-1] // 50} s); split the text into shorter segments")
        noise = noise[:, :, :total].to(w.device, w.dtype)

        mu = self.encode(tokens)  # (1, 80, total)
        spk = self.speaker(spk_emb.reshape(1, -1).to(w.device, w.dtype))
        cond = torch.zeros_like(mu)
        if prompt_frames:
            mel = prompt_mel.to(w.device, w.dtype).t().unsqueeze(0)  # (1, 80, Tm)
            cond[:, :, :prompt_frames] = F.interpolate(mel, size=prompt_frames, mode="nearest")
        return FlowJob(noise, mu, spk, cond, keep=prompt_frames)


@dataclass
class FlowJob:
    """One request's flow work, ready for the DiT's Euler solve: (1, 80, T) start noise, encoder
    output and condition, the (1, 80) speaker projection, the DiT caches of a primed or streamed
    chunk ([Euler step][block]; None for the one-pass offline flow) and the first frame returned."""

    noise: torch.Tensor
    mu: torch.Tensor
    spk: torch.Tensor
    cond: torch.Tensor
    keep: int
    conv: list | None = None  # [step][block] (2, 2C, 2) causal-conv context ([cond; uncond])
    att: list | None = None  # [step][block] (2, H, S, 2D) keys|values

    @property
    def frames(self) -> int:
        return int(self.mu.shape[2])

    @property
    def cached(self) -> int:
        """Frames of DiT attention cache this job reads (0 for the one-pass flow)."""
        return int(self.att[0][0].shape[2]) if self.att else 0


# ----------------------------------------------------------------------------- weights

# Official flow.pt key prefix ↔ our module path prefix, one table for both directions. {slot}s match
# the same text on both sides (_SLOTS); the first matching row wins; other keys keep their names.
_KEY_RENAMES: tuple[tuple[str, str], ...] = (
    ("encoder.{embed}.out.0.", "encoder.{embed}.linear."),
    ("encoder.{embed}.out.1.", "encoder.{embed}.norm."),
    ("decoder.estimator.t_embedder.mlp.0.", "estimator.t_embedder.fc1."),
    ("decoder.estimator.t_embedder.mlp.2.", "estimator.t_embedder.fc2."),
    ("decoder.estimator.{block}.conv.block.1.", "estimator.{block}.conv.conv1."),
    ("decoder.estimator.{block}.conv.block.3.", "estimator.{block}.conv.norm."),
    ("decoder.estimator.{block}.conv.block.6.", "estimator.{block}.conv.conv2."),
    ("decoder.estimator.{modulated}.adaLN_modulation.1.", "estimator.{modulated}.modulation."),
    ("decoder.estimator.", "estimator."),
)
_SLOTS = {"embed": r"embed|up_embed", "block": r"blocks\.\d+", "modulated": r"blocks\.\d+|final_layer"}


def _compile(src: str, dst: str) -> tuple[re.Pattern, str]:
    """A template pair → (regex for `src`, replacement building `dst` from the same slots)."""
    parts = re.split(r"\{(\w+)\}", src)  # literal, slot, literal, ...
    pattern = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>{_SLOTS[p]})" for i, p in enumerate(parts))
    return re.compile("^" + pattern), re.sub(r"\{(\w+)\}", r"\\g<\1>", dst)


_TO_MODEL = tuple(_compile(official, ours) for official, ours in _KEY_RENAMES)
_TO_OFFICIAL = tuple(_compile(ours, official) for official, ours in _KEY_RENAMES)


def _apply_map(key: str, table: tuple[tuple[re.Pattern, str], ...]) -> str:
    for pattern, repl in table:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


def to_model_key(official: str) -> str:
    return _apply_map(official, _TO_MODEL)


def to_official_key(ours: str) -> str:
    return _apply_map(ours, _TO_OFFICIAL)


def load_flow_state(model: CosyVoiceFlow, state: dict[str, torch.Tensor], *, source: str = FLOW_FILE) -> None:
    """Assign an official-key state dict to a (meta or real) model; every parameter must match exactly.

    Strict both ways through the one key map (`_KEY_RENAMES`): every tensor in flow.pt lands in a
    parameter or the load fails naming it. Meta tensors work too (`editx doctor` checks flow.pt's index).
    """
    not_float = sorted(k for k, t in state.items() if not t.dtype.is_floating_point)
    if not_float:
        raise ModelFilesError(f"{source}: {not_float[0]} is {state[not_float[0]].dtype}, not a float tensor; "
                              "re-download the CosyVoice-300M-25Hz folder")
    expected = dict(model.state_dict(keep_vars=True))
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, tensor in state.items():
        ours = to_model_key(key)
        if ours in expected:
            mapped[ours] = tensor
        else:
            unexpected.append(key)
    missing = [to_official_key(k) for k in expected if k not in mapped]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {name_some(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {name_some(unexpected)}")
        raise ModelFilesError(f"{source} does not match cosyvoice.yaml's flow ({'; '.join(parts)}); "
                              "use the flow.pt and cosyvoice.yaml from the same CosyVoice-300M-25Hz folder")
    wrong = [f"{to_official_key(k)} {tuple(t.shape)} (config wants {tuple(expected[k].shape)})"
             for k, t in mapped.items() if t.shape != expected[k].shape]
    if wrong:
        raise ModelFilesError(f"{source} tensor shapes disagree with cosyvoice.yaml: {name_some(wrong, 4)}")
    model.load_state_dict(mapped, strict=True, assign=True)


def flow_state(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict in a loaded flow.pt (rule: a training checkpoint's "state_dict" is unwrapped)."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFilesError(f"{path} must hold a flat state dict of tensors")
    return obj


def load_flow(path: str | Path, cfg: FlowConfig, *, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, noise_seed: int = DEFAULT_NOISE_SEED) -> CosyVoiceFlow:
    """Build the flow on the meta device, load flow.pt through the key map, then move to device/dtype."""
    path = Path(path)
    state = load_torch_file(path, "CosyVoice flow checkpoint")
    state = flow_state(state, path)
    with torch.device("meta"):
        model = CosyVoiceFlow(cfg)
    load_flow_state(model, state, source=str(path))
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    model.set_noise(make_noise(noise_seed, cfg.output_size))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("loaded flow %s: %.1fM parameters, %s %s", path, n_params / 1e6, device, dtype)
    return model


__all__ = [
    "FLOW_FILE",
    "NOISE_FRAMES",
    "CosyVoiceFlow",
    "DualCodebookEmbedding",
    "FlowJob",
    "cosine_t_span",
    "guided_velocity",
    "load_flow",
    "flow_state",
    "load_flow_state",
    "make_noise",
    "solve_euler",
    "to_model_key",
    "to_official_key",
]
