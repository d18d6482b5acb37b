"""vq02: the FunASR Paraformer streaming encoder (SANMEncoderChunkOpt) + k-means, as Step-Audio runs it.

Step-Audio-EditX `tokenizer.py` feeds the whole utterance through FunASR's `infer_encoder` with
chunk_size [0, 4, 5], encoder_chunk_look_back 4 and is_final=True, takes `enc_out` (the last layer
after `after_norm`) and assigns each 60 ms frame to the nearest of 1024 centroids
(`linguistic_tokenizer.npy`, torch.cdist + argmin) -> codes 0..1023 at 16.67 Hz.

The streaming semantics are reproduced exactly but computed layer by layer over all chunks at once:
chunk c sees its own window (5 frames of overlap + its new frames) plus, in every layer, the keys and
values of the last 16 "stride" frames that earlier chunks put in that layer's cache. Each window is
otherwise independent, so a layer is one batched attention with a banded mask instead of a Python loop
over chunks. Sizes come from the official config.yaml, so the released 50-block model loads unchanged.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from editx.errors import ModelFilesError
from editx.tokenizer import frontend
from editx.torchfile import load_torch_file

log = logging.getLogger(__name__)

# Step-Audio-EditX tokenizer.py: infer_encoder(chunk_size=[0, 4, 5], encoder_chunk_look_back=4, ...).
CHUNK_SIZE = (0, 4, 5)  # (unused left part, new LFR frames per chunk, overlap frames)
ENCODER_LOOK_BACK = 4  # chunks of cached keys/values per layer
VQ02_CODEBOOK_SIZE = 1024
LAYER_NORM_EPS = 1e-12  # FunASR LayerNorm
PE_TIMESCALE = 10000.0
ENCODER_CLASS = "SANMEncoderChunkOpt"
ENCODER_PREFIX = "encoder."
# Rule: model.pt holds the whole ASR model. Only `encoder.*` is used (upstream runs infer_encoder and
# nothing after it); the ASR decoder and the CIF predictor are skipped by name. Any other key fails
# the load, so a tensor we do not know about is never dropped silently.
UNUSED_PREFIXES = ("decoder.", "predictor.")


@dataclass(frozen=True)
class ParaformerConfig:
    """The parts of the FunASR config.yaml the streaming encoder and its front end need."""

    input_size: int  # n_mels * lfr_m (560 for the released model)
    output_size: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    kernel_size: int
    sanm_shift: int  # spelled `sanm_shfit` in FunASR configs
    frontend: frontend.FrontendConfig

    @classmethod
    def from_yaml(cls, path: Path) -> ParaformerConfig:
        data = read_yaml(path)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.yaml") -> ParaformerConfig:
        encoder = data.get("encoder")
        if encoder != ENCODER_CLASS:
            raise ModelFilesError(f"{source}: encoder is {encoder!r}, expected {ENCODER_CLASS!r} "
                                  "(the Paraformer streaming model shipped in Step-Audio-Tokenizer)")
        conf = data.get("encoder_conf") or {}
        fe = frontend.FrontendConfig.from_dict(data.get("frontend_conf") or {}, source=source)
        if conf.get("input_layer", "pe_online") != "pe_online":
            raise ModelFilesError(f"{source}: encoder_conf.input_layer must be 'pe_online', "
                                  f"got {conf.get('input_layer')!r}")
        if conf.get("selfattention_layer_type", "sanm") != "sanm" or not conf.get("normalize_before", True):
            raise ModelFilesError(f"{source}: only the pre-norm SAN-M encoder is supported "
                                  "(selfattention_layer_type: sanm, normalize_before: true)")
        try:
            cfg = cls(
                input_size=fe.n_mels * fe.lfr_m,
                output_size=int(conf["output_size"]),
                attention_heads=int(conf["attention_heads"]),
                linear_units=int(conf["linear_units"]),
                num_blocks=int(conf["num_blocks"]),
                kernel_size=int(conf.get("kernel_size", 11)),
                sanm_shift=int(conf.get("sanm_shfit", conf.get("sanm_shift", 0))),
                frontend=fe,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelFilesError(f"{source}: encoder_conf is missing or has a bad value: {exc}") from exc
        if cfg.output_size % cfg.attention_heads or cfg.num_blocks < 1:
            raise ModelFilesError(f"{source}: output_size {cfg.output_size} must divide by attention_heads "
                                  f"{cfg.attention_heads} and num_blocks must be >= 1")
        return cfg


class SanmAttention(nn.Module):
    """Self-attention plus an FSMN memory (depthwise conv over the values), FunASR MultiHeadedAttentionSANM."""

    def __init__(self, in_dim: int, dim: int, heads: int, kernel_size: int, shift: int) -> None:
        super().__init__()
        self.heads = heads
        self.linear_q_k_v = nn.Linear(in_dim, 3 * dim)
        self.linear_out = nn.Linear(dim, dim)
        self.fsmn_block = nn.Conv1d(dim, dim, kernel_size, groups=dim, bias=False)
        left = (kernel_size - 1) // 2 + max(shift, 0)
        self.pad = (left, kernel_size - 1 - left)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, cache_index: torch.Tensor,
                cache_valid: torch.Tensor, stride_index: torch.Tensor) -> torch.Tensor:
        # x: (C, W, Din) one window per chunk; valid: (C, W); cache_index/valid: (C, LB);
        # stride_index: (S,) flat window positions whose keys/values enter the layer cache.
        c, w, _ = x.shape
        q, k, v = self.linear_q_k_v(x).chunk(3, dim=-1)  # (C, W, D) each
        dim = q.shape[-1]
        v = v * valid.unsqueeze(-1)
        memory = nn.functional.conv1d(nn.functional.pad(v.transpose(1, 2), self.pad),
                                      self.fsmn_block.weight, groups=dim).transpose(1, 2) + v  # (C, W, D)
        # Keys/values: the cached stride frames of earlier chunks, then the window itself.
        k_stride = k.reshape(c * w, dim)[stride_index]  # (S, D)
        v_stride = v.reshape(c * w, dim)[stride_index]
        keys = torch.cat((k_stride[cache_index], k), dim=1)  # (C, LB + W, D)
        values = torch.cat((v_stride[cache_index], v), dim=1)
        mask = torch.cat((cache_valid, valid), dim=1)[:, None, None, :]  # (C, 1, 1, LB + W)
        d_k = dim // self.heads
        q = q.view(c, w, self.heads, d_k).transpose(1, 2)  # (C, H, W, dk)
        keys = keys.view(c, -1, self.heads, d_k).transpose(1, 2)  # (C, H, LB + W, dk)
        values = values.view(c, -1, self.heads, d_k).transpose(1, 2)
        att = nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (C, H, W, dk)
        att = att.transpose(1, 2).reshape(c, w, dim)
        return self.linear_out(att) + memory


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(torch.relu(self.w_1(x)))


class SanmLayer(nn.Module):
    """Pre-norm encoder layer; the first one maps 560 -> D and has no attention residual."""

    def __init__(self, in_dim: int, cfg: ParaformerConfig) -> None:
        super().__init__()
        dim = cfg.output_size
        self.residual = in_dim == dim
        self.self_attn = SanmAttention(in_dim, dim, cfg.attention_heads, cfg.kernel_size, cfg.sanm_shift)
        self.feed_forward = FeedForward(dim, cfg.linear_units)
        self.norm1 = nn.LayerNorm(in_dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor, *attn_args: torch.Tensor) -> torch.Tensor:
        att = self.self_attn(self.norm1(x), *attn_args)
        x = x + att if self.residual else att
        return x + self.feed_forward(self.norm2(x))


class SanmEncoder(nn.Module):
    """SANMEncoderChunkOpt weights (`encoders0`, `encoders`, `after_norm`) with the streaming forward."""

    def __init__(self, cfg: ParaformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoders0 = nn.ModuleList([SanmLayer(cfg.input_size, cfg)])
        self.encoders = nn.ModuleList([SanmLayer(cfg.output_size, cfg) for _ in range(cfg.num_blocks - 1)])
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=LAYER_NORM_EPS)

    def forward(self, feats: torch.Tensor, chunk_lens: list[int]) -> torch.Tensor:
        """feats (T, input_size) LFR+CMVN frames, split into chunks of `chunk_lens` -> (T, output_size)."""
        plan = _window_plan(chunk_lens, feats.device)
        x = feats * math.sqrt(self.cfg.output_size)
        x = x + sinusoidal_positions(x.shape[0], x.shape[1], x.device)
        overlap = CHUNK_SIZE[2]
        # Every window starts with the 5 frames before its new ones; the first chunk sees zeros there.
        x = torch.cat((x.new_zeros(overlap, x.shape[1]), x))
        x = x[plan.window_index] * plan.valid.unsqueeze(-1)  # (C, W, input_size)
        args = (plan.valid, plan.cache_index, plan.cache_valid, plan.stride_index)
        for layer in (*self.encoders0, *self.encoders):
            x = layer(x, *args)
        x = self.after_norm(x)
        return x.reshape(-1, x.shape[-1])[plan.output_index]  # (T, D)


@dataclass(frozen=True)
class _WindowPlan:
    width: int  # W: overlap + the largest chunk
    window_index: torch.Tensor  # (C, W) rows of [zeros(5); frames] that make each window
    valid: torch.Tensor  # (C, W) bool: inside the window
    stride_index: torch.Tensor  # (S,) flat (C*W) positions of the frames that enter the caches, in order
    cache_index: torch.Tensor  # (C, LB) positions into the stride list seen by each chunk
    cache_valid: torch.Tensor  # (C, LB) bool
    output_index: torch.Tensor  # (T,) flat positions of every chunk's new frames


def _window_plan(chunk_lens: list[int], device: torch.device) -> _WindowPlan:
    overlap = CHUNK_SIZE[2]
    look_back = ENCODER_LOOK_BACK * CHUNK_SIZE[1]  # upstream keeps the last 4 * 4 cached frames
    lens = torch.tensor(chunk_lens, dtype=torch.long)
    n_chunks, width = len(chunk_lens), overlap + int(lens.max())
    starts = torch.cumsum(lens, 0) - lens  # first new frame of each chunk
    pos = torch.arange(width)
    valid = pos[None, :] < (lens[:, None] + overlap)
    window_index = torch.where(valid, starts[:, None] + pos[None, :], 0)  # row 0 is a zero frame
    # Cache: a window's frames except its last `overlap` (its "stride"), then the last 16 of them.
    in_stride = pos[None, :] < lens[:, None]
    stride_index = (torch.arange(n_chunks)[:, None] * width + pos[None, :])[in_stride]
    cache_index = starts[:, None] - look_back + torch.arange(look_back)[None, :]
    cache_valid = cache_index >= 0
    out = (pos[None, :] >= overlap) & valid
    output_index = (torch.arange(n_chunks)[:, None] * width + pos[None, :])[out]
    return _WindowPlan(width, window_index.to(device), valid.to(device), stride_index.to(device),
                       cache_index.clamp(min=0).to(device), cache_valid.to(device), output_index.to(device))


def sinusoidal_positions(length: int, depth: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """FunASR StreamSinusoidalPositionEncoder for positions 1..length: (length, depth), float32."""
    half = depth // 2
    increment = torch.log(torch.tensor([PE_TIMESCALE])) / (depth / 2 - 1)
    inv_timescales = torch.exp(torch.arange(half, dtype=torch.float32) * -increment)  # (half,)
    scaled = torch.arange(1, length + 1, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat((torch.sin(scaled), torch.cos(scaled)), dim=1).to(device)


class ParaformerVq02:
    """Paraformer streaming encoder + k-means: 16 kHz audio -> vq02 codes (0..1023)."""

    def __init__(self, cfg: ParaformerConfig, encoder: SanmEncoder, cmvn: frontend.Cmvn,
                 centroids: torch.Tensor) -> None:
        self.cfg = cfg
        self.encoder = encoder
        self.cmvn = cmvn
        self.centroids = centroids  # (1024, D) float32, CPU: the distance runs where upstream runs it

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    @classmethod
    def load(cls, model_dir: Path, kmeans_path: Path, *, device: str | torch.device = "cpu") -> ParaformerVq02:
        """Load config.yaml + model.pt + am.mvn from the FunASR model dir and the k-means centroids."""
        model_dir = Path(model_dir)
        cfg = ParaformerConfig.from_yaml(model_dir / "config.yaml")
        cmvn = frontend.Cmvn.from_file(model_dir / "am.mvn", cfg.input_size)
        state = load_state_dict_file(model_dir / "model.pt")
        encoder = build_encoder(cfg, state, source=model_dir / "model.pt", device=device)
        centroids = load_centroids(Path(kmeans_path), cfg.output_size)
        return cls(cfg, encoder, cmvn, centroids)

    @torch.inference_mode()
    def encode(self, samples16k: np.ndarray) -> torch.Tensor:
        """`enc_out` of upstream infer_encoder: (T, D) float32 on CPU (T = 0 for very short audio)."""
        feats, chunk_lens = frontend.streaming_features(samples16k, self.cfg.frontend, self.cmvn, CHUNK_SIZE[1])
        if not chunk_lens:
            return torch.empty(0, self.cfg.output_size)
        return self.encoder(feats.to(self.device), chunk_lens).float().cpu()

    def codes(self, samples16k: np.ndarray) -> np.ndarray:
        """vq02 codes (T,) int64 in 0..1023."""
        enc = self.encode(samples16k)
        return nearest_centroid(enc, self.centroids)


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> np.ndarray:
    """Index of the nearest centroid per row, as upstream (torch.cdist + argmin, float32 on CPU)."""
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return torch.cdist(x.float().cpu(), centroids).argmin(dim=1).numpy().astype(np.int64)


def build_encoder(cfg: ParaformerConfig, state: dict[str, torch.Tensor], *, source: Path,
                  device: str | torch.device = "cpu") -> SanmEncoder:
    """Meta-built encoder filled from the `encoder.*` keys (see UNUSED_PREFIXES for the rest).

    Works on meta tensors too (`editx doctor` checks a model.pt's index this way, reading no weight).
    """
    with torch.device("meta"):
        encoder = SanmEncoder(cfg)
    wanted = encoder.state_dict().keys()
    unknown = sorted(k for k in state if not k.startswith((ENCODER_PREFIX,) + UNUSED_PREFIXES))
    if unknown:
        raise ModelFilesError(f"{source}: unexpected tensor(s) {', '.join(unknown[:3])}"
                              f"{f' (+{len(unknown) - 3} more)' if len(unknown) > 3 else ''}; a Paraformer "
                              "model.pt holds only encoder.*, decoder.* and predictor.* keys: re-download "
                              "Step-Audio-Tokenizer")
    ours = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    ignored = len(state) - len(ours)
    missing = sorted(set(wanted) - set(ours))
    unexpected = sorted(set(ours) - set(wanted))
    if missing or unexpected:
        raise ModelFilesError(
            f"{source}: the encoder weights do not match config.yaml "
            f"({len(missing)} missing, e.g. {', '.join(ENCODER_PREFIX + k for k in missing[:3]) or '-'}; "
            f"{len(unexpected)} unexpected, e.g. {', '.join(ENCODER_PREFIX + k for k in unexpected[:3]) or '-'})"
            "; use the model.pt and config.yaml from the same Step-Audio-Tokenizer download")
    not_float = sorted(k for k, v in ours.items() if not v.dtype.is_floating_point)
    if not_float:
        raise ModelFilesError(f"{source}: {ENCODER_PREFIX}{not_float[0]} is {ours[not_float[0]].dtype}, not a "
                              "float tensor; re-download Step-Audio-Tokenizer")
    expected_shapes = {k: v.shape for k, v in encoder.state_dict().items()}
    for key, tensor in ours.items():
        if tuple(tensor.shape) != tuple(expected_shapes[key]):
            raise ModelFilesError(f"{source}: {ENCODER_PREFIX}{key} has shape {tuple(tensor.shape)}, "
                                  f"config.yaml implies {tuple(expected_shapes[key])}")
    encoder.load_state_dict({k: v.to(torch.float32) for k, v in ours.items()}, strict=True, assign=True)
    log.debug("loaded %d encoder tensors from %s (ignored %d decoder/predictor tensors)",
              len(ours), source, ignored)
    return encoder.to(device).eval()


def load_centroids(path: Path, dim: int) -> torch.Tensor:
    """linguistic_tokenizer.npy: (1024, D) float32 k-means centroids."""
    if not path.is_file():
        raise ModelFilesError(f"missing {path} (the vq02 k-means centroids); re-download Step-Audio-Tokenizer")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ModelFilesError(f"cannot read {path}: {exc}; re-download Step-Audio-Tokenizer") from exc
    if arr.ndim != 2 or arr.shape != (VQ02_CODEBOOK_SIZE, dim):
        raise ModelFilesError(f"{path} has shape {arr.shape}, expected ({VQ02_CODEBOOK_SIZE}, {dim}) "
                              "to match the encoder output size")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def read_yaml(path: Path) -> dict:
    """An official YAML file parsed as plain data."""
    if not path.is_file():
        raise ModelFilesError(f"missing {path}; re-download Step-Audio-Tokenizer (the FunASR model folder)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelFilesError(f"cannot parse {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelFilesError(f"{path} is not a YAML mapping")
    return data


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A FunASR model.pt as a tensor dict (see `state_from_checkpoint` for the unwrapping rules)."""
    obj = load_torch_file(path, "Paraformer weights")
    return state_from_checkpoint(obj, path)


def state_from_checkpoint(obj, path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded model.pt. Rules: a dict under "state_dict" or "model" is unwrapped
    (FunASR training checkpoints); a "module." prefix is removed only when every key has it (DataParallel)."""
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFilesError(f"{path} does not hold a tensor state dict")
    if obj and all(k.startswith("module.") for k in obj):
        return {k.removeprefix("module."): v for k, v in obj.items()}
    return dict(obj)
