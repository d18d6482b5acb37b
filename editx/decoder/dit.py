"""The CFM velocity estimator: a DiT with adaLN-zero blocks, q/k LayerNorm and a causal conv branch.

Offline semantics of stepvocoder/cosyvoice2/flow/decoder_dit.py (`DiT.forward`): inputs are
[x, mu, speaker, prompt condition] stacked on channels, every frame attends to every frame, the
timestep drives per-block shift/scale/gate modulations (attention, conv, MLP order).
`forward_chunk` is upstream's streaming path: a chunk of frames attends to itself and to the cached
keys/values of earlier frames (newest first, as upstream concatenates them); the causal convolutions
carry their last two input frames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from editx.decoder.config import EstimatorConfig

TIME_FREQS = 256  # sinusoidal frequencies of the timestep embedding
TIME_SCALE = 1000.0  # t in [0, 1] is scaled like a diffusion step index
MAX_PERIOD = 10000.0
BLOCK_NORM_EPS = 1e-6  # norm1/2/3 and the final norm: LayerNorm without affine parameters
QK_NORM_EPS = 1e-5  # nn.LayerNorm default
N_MODULATIONS = 9  # shift/scale/gate for attention, MLP and conv


def timestep_features(t: torch.Tensor, dim: int = TIME_FREQS) -> torch.Tensor:
    """(B,) times in [0, 1] → (B, dim) [cos, sin] features of t*1000."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t * TIME_SCALE)[:, None] * freqs.to(t.dtype)[None]
    feats = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        feats = torch.cat([feats, torch.zeros_like(feats[:, :1])], dim=-1)
    return feats


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift, as one fused op."""
    return torch.addcmul(shift, x, 1 + scale)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(TIME_FREQS, hidden)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(timestep_features(t.to(self.fc1.weight.dtype)))))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.q_norm = nn.LayerNorm(head_dim, eps=QK_NORM_EPS)
        self.k_norm = nn.LayerNorm(head_dim, eps=QK_NORM_EPS)
        self.proj = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, C)
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_norm(self.to_q(x).view(shape).transpose(1, 2))  # (B, H, T, D)
        k = self.k_norm(self.to_k(x).view(shape).transpose(1, 2))
        v = self.to_v(x).view(shape).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1))

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor | None,
                      attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C); cache (B, H, S, 2D) earlier keys|values → out, new cache (B, H, T+S, 2D).
        `attn_mask` (B, 1, 1|T, T+S) bool: which keys (new frames, then cache) each row may read."""
        b, t, _ = x.shape
        shape = (b, t, self.num_heads, self.head_dim)
        q = self.q_norm(self.to_q(x).view(shape).transpose(1, 2))  # (B, H, T, D)
        kv = torch.cat([self.k_norm(self.to_k(x).view(shape).transpose(1, 2)),
                        self.to_v(x).view(shape).transpose(1, 2)], dim=-1)  # (B, H, T, 2D)
        if cache is not None:
            kv = torch.cat([kv, cache], dim=2)
        k, v = kv.split(self.head_dim, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, t, -1)), kv


class CausalConv(nn.Module):
    """Two causal k=3 convs with LayerNorm + Mish between; (B, T, C) in and out."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.pad = kernel_size - 1
        self.conv1 = nn.Conv1d(channels, channels, kernel_size)
        self.norm = nn.LayerNorm(channels)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(F.pad(x.transpose(1, 2), (self.pad, 0))).transpose(1, 2)
        y = F.mish(self.norm(y))
        return self.conv2(F.pad(y.transpose(1, 2), (self.pad, 0))).transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C); cache (B, 2C, pad) the last inputs of conv1 and conv2 → y, new cache."""
        c = x.shape[-1]
        if cache is None:
            cache = x.new_zeros(x.shape[0], 2 * c, self.pad)
        y = torch.cat([cache[:, :c], x.transpose(1, 2)], dim=2)
        new1 = y[..., -self.pad:]
        y = F.mish(self.norm(self.conv1(y).transpose(1, 2))).transpose(1, 2)
        y = torch.cat([cache[:, c:], y], dim=2)
        return self.conv2(y).transpose(1, 2), torch.cat([new1, y[..., -self.pad:]], dim=1)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: EstimatorConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.LayerNorm(h, eps=BLOCK_NORM_EPS, elementwise_affine=False)
        self.attn = Attention(h, cfg.num_heads, cfg.head_dim)
        self.norm2 = nn.LayerNorm(h, eps=BLOCK_NORM_EPS, elementwise_affine=False)
        self.mlp = MLP(h, cfg.mlp_hidden)
        self.norm3 = nn.LayerNorm(h, eps=BLOCK_NORM_EPS, elementwise_affine=False)
        self.conv = CausalConv(h)
        self.modulation = nn.Linear(h, N_MODULATIONS * h)

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, T, C); c (B, 1, C) timestep embedding
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.modulation(F.silu(c)).chunk(N_MODULATIONS, dim=-1)
        # residual + gate * branch, each as one fused op
        x = torch.addcmul(x, gate_msa, self.attn(modulate(self.norm1(x), shift_msa, scale_msa), attn_mask))
        x = torch.addcmul(x, gate_conv, self.conv(modulate(self.norm3(x), shift_conv, scale_conv)))
        return torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))

    def forward_chunk(self, x: torch.Tensor, c: torch.Tensor, conv_cache: torch.Tensor | None,
                      att_cache: torch.Tensor | None, attn_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp,
         shift_conv, scale_conv, gate_conv) = self.modulation(F.silu(c)).chunk(N_MODULATIONS, dim=-1)
        y, att_cache = self.attn.forward_chunk(modulate(self.norm1(x), shift_msa, scale_msa), att_cache, attn_mask)
        x = torch.addcmul(x, gate_msa, y)
        y, conv_cache = self.conv.forward_chunk(modulate(self.norm3(x), shift_conv, scale_conv), conv_cache)
        x = torch.addcmul(x, gate_conv, y)
        x = torch.addcmul(x, gate_mlp, self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp)))
        return x, conv_cache, att_cache


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.norm_final = nn.LayerNorm(hidden, eps=BLOCK_NORM_EPS, elementwise_affine=False)
        self.linear = nn.Linear(hidden, out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(F.silu(c)).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class DiT(nn.Module):
    """Velocity v(x, t | mu, speaker, cond): channel-first (B, 80, T) tensors in, (B, 80, T) out."""

    def __init__(self, cfg: EstimatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.t_embedder = TimestepEmbedder(cfg.hidden_size)
        self.in_proj = nn.Linear(cfg.in_channels, cfg.hidden_size)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg.hidden_size, cfg.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, spk: torch.Tensor,
                cond: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x, mu, cond (B, 80, T); t (B,) or (1,) shared by the batch; spk (B, 80)
        c = self.t_embedder(t).unsqueeze(1)  # (B|1, 1, C)
        h = torch.cat([x, mu, spk.unsqueeze(2).expand(-1, -1, x.shape[2]), cond], dim=1)
        h = self.in_proj(h.transpose(1, 2))  # (B, T, C)
        for block in self.blocks:
            h = block(h, c, attn_mask)
        return self.final_layer(h, c).transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, spk: torch.Tensor,
                      cond: torch.Tensor, conv_cache: list[torch.Tensor] | None,
                      att_cache: list[torch.Tensor] | None, attn_mask: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list, list]:
        """Velocity of the next frames (B, 80, T) given per-block caches; returns it and the new caches.
        `attn_mask` (B, 1, 1, T+S) bool marks the keys each row may read (batched chunks of different
        lengths, editx.decoder.batch); causal convolutions need none for right padding."""
        c = self.t_embedder(t).unsqueeze(1)
        h = torch.cat([x, mu, spk.unsqueeze(2).expand(-1, -1, x.shape[2]), cond], dim=1)
        h = self.in_proj(h.transpose(1, 2))  # (B, T, C)
        conv_cache = conv_cache or [None] * len(self.blocks)
        att_cache = att_cache or [None] * len(self.blocks)
        new_conv, new_att = [], []
        for block, cc, ac in zip(self.blocks, conv_cache, att_cache):
            h, cc, ac = block.forward_chunk(h, c, cc, ac, attn_mask)
            new_conv.append(cc)
            new_att.append(ac)
        return self.final_layer(h, c).transpose(1, 2), new_conv, new_att
