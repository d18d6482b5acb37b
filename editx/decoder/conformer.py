"""The flow's token encoder: UpsampleConformerEncoderV2 (rel-pos conformer, lookahead, 2x upsampling).

Offline semantics of stepvocoder/cosyvoice2/transformer/upsample_encoder_v2.py with a single unpadded
sequence: full bidirectional attention with ESPnet relative positions, pre-norm blocks without
convolution or macaron modules, dropout off. `forward_chunk` is upstream's streaming path: each chunk
attends to the cached keys/values of every earlier row plus itself, the lookahead and upsampling
convolutions carry their left context in an `EncoderCache`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from editx.decoder.config import EncoderConfig

_ACTIVATIONS = {"swish": nn.SiLU, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "selu": nn.SELU,
                "hardtanh": nn.Hardtanh}
BLOCK_NORM_EPS = 1e-12  # ConformerEncoderLayer norm_mha / norm_ff
EMBED_NORM_EPS = 1e-5  # LinearNoSubsampling and after_norm


def rel_position_table(size: int, d_model: int, *, device: torch.device | None = None,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ESPnet relative sinusoids for offsets size-1 … -(size-1): (1, 2*size-1, d_model)."""
    offsets = torch.arange(size - 1, -size, -1, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32, device=device)
                    * -(math.log(10000.0) / d_model))
    pe = torch.empty(2 * size - 1, d_model, dtype=torch.float32, device=device)
    pe[:, 0::2] = torch.sin(offsets * div)
    pe[:, 1::2] = torch.cos(offsets * div)
    return pe.unsqueeze(0).to(dtype)


def rel_shift(scores: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2L-1) scores against offsets L-1 … -(L-1) → (B, H, T, L) indexed by query - key (a view).

    The T queries are the last T of the L positions (T == L offline; T < L with a key cache).
    """
    b, h, t, w = scores.shape
    scores = scores.contiguous()
    sb, sh, st, sw = scores.stride()
    # element (i, j) sits at column (T-1) - i + j of row i (query L-T+i against key j)
    return scores.as_strided((b, h, t, (w + 1) // 2), (sb, sh, st - sw, sw), scores.storage_offset() + (t - 1) * sw)


@dataclass
class EncoderCache:
    """What one encoder chunk hands to the next: per-block keys/values of every row so far and the
    left context of the two causal convolutions."""

    att: list[tuple[torch.Tensor, torch.Tensor]]  # per block (B, H, rows or 2*rows, D) keys, values
    lookahead: torch.Tensor  # (B, C, 2) last lookahead conv1 outputs (conv2's left context)
    upsample: torch.Tensor  # (B, C, 2*stride) last repeated rows (the upsampling conv's left context)
    rows: int  # token rows encoded so far


class LinearEmbed(nn.Module):
    """Linear + LayerNorm, then the positional module's sqrt(d) scaling (LinearNoSubsampling)."""

    def __init__(self, idim: int, odim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(idim, odim)
        self.norm = nn.LayerNorm(odim, eps=EMBED_NORM_EPS)
        self.xscale = math.sqrt(odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(x)) * self.xscale


class RelPositionAttention(nn.Module):
    """Transformer-XL style attention: content term (q+u)k and position term (q+v)p, rel-shifted."""

    def __init__(self, n_head: int, n_feat: int, key_bias: bool = True) -> None:
        super().__init__()
        self.h, self.d_k = n_head, n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat, bias=key_bias)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(self.h, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(self.h, self.d_k))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C); pos (1, 2T-1, C)
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos).view(1, -1, self.h, self.d_k).transpose(1, 2)  # (1, H, 2T-1, D)
        q_u = (q + self.pos_bias_u).transpose(1, 2)  # (B, H, T, D)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.d_k)
        position = rel_shift(torch.matmul(q_v, p.transpose(-2, -1))) * scale  # (B, H, T, T)
        out = F.scaled_dot_product_attention(q_u, k, v, attn_mask=position, scale=scale)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, c))

    def forward_chunk(self, x: torch.Tensor, pos: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, C) after `cache` (B, H, L-T, D) keys/values; pos (1, 2L-1, C). Returns out, new cache."""
        b, t, c = x.shape
        q = self.linear_q(x).view(b, t, self.h, self.d_k)
        k = self.linear_k(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.h, self.d_k).transpose(1, 2)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)  # (B, H, L, D)
        p = self.linear_pos(pos).view(1, -1, self.h, self.d_k).transpose(1, 2)  # (1, H, 2L-1, D)
        q_u = (q + self.pos_bias_u).transpose(1, 2)
        q_v = (q + self.pos_bias_v).transpose(1, 2)
        scale = 1.0 / math.sqrt(self.d_k)
        position = rel_shift(torch.matmul(q_v, p.transpose(-2, -1))) * scale  # (B, H, T, L)
        out = F.scaled_dot_product_attention(q_u, k, v, attn_mask=position, scale=scale)
        return self.linear_out(out.transpose(1, 2).reshape(b, t, c)), (k, v)


class FeedForward(nn.Module):
    def __init__(self, idim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden)
        self.act = _ACTIVATIONS[activation]()
        self.w_2 = nn.Linear(hidden, idim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.act(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-norm self-attention then feed-forward, both residual."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        size = cfg.output_size
        self.self_attn = RelPositionAttention(cfg.attention_heads, size, cfg.key_bias)
        self.feed_forward = FeedForward(size, cfg.linear_units, cfg.activation)
        self.norm_mha = nn.LayerNorm(size, eps=BLOCK_NORM_EPS)
        self.norm_ff = nn.LayerNorm(size, eps=BLOCK_NORM_EPS)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_mha(x), pos)
        return x + self.feed_forward(self.norm_ff(x))

    def forward_chunk(self, x: torch.Tensor, pos: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None
                      ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        y, cache = self.self_attn.forward_chunk(self.norm_mha(x), pos, cache)
        x = x + y
        return x + self.feed_forward(self.norm_ff(x)), cache


class PreLookahead(nn.Module):
    """Look `n` tokens ahead (right-padded conv), then a causal k=3 conv; residual."""

    def __init__(self, channels: int, lookahead: int) -> None:
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels, channels, kernel_size=lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.pad(x.transpose(1, 2), (0, self.lookahead))  # (B, C, T + n)
        y = F.leaky_relu(self.conv1(y))
        y = self.conv2(F.pad(y, (2, 0)))
        return x + y.transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T+n, C), its last n rows only looked at → (B, T, C); cache (B, C, 2) conv1 outputs."""
        y = F.leaky_relu(self.conv1(x.transpose(1, 2)))  # (B, C, T)
        if cache is None:
            cache = y.new_zeros(y.shape[0], y.shape[1], 2)
        new_cache = torch.cat([cache, y], dim=2)[..., -2:]
        y = self.conv2(torch.cat([cache, y], dim=2))
        return x[:, :-self.lookahead] + y.transpose(1, 2), new_cache


class Upsample(nn.Module):
    """Nearest repeat by `stride`, then a causal conv with kernel 2*stride+1."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv = nn.Conv1d(channels, channels, kernel_size=2 * stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.transpose(1, 2).repeat_interleave(self.stride, dim=2)  # (B, C, stride*T)
        return self.conv(F.pad(y, (2 * self.stride, 0))).transpose(1, 2)

    def forward_chunk(self, x: torch.Tensor, cache: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, C) → (B, stride*T, C); cache (B, C, 2*stride) the previous repeated rows."""
        y = x.transpose(1, 2).repeat_interleave(self.stride, dim=2)
        if cache is None:
            cache = y.new_zeros(y.shape[0], y.shape[1], 2 * self.stride)
        y = torch.cat([cache, y], dim=2)
        return self.conv(y).transpose(1, 2), y[..., -2 * self.stride:]


class TokenEncoder(nn.Module):
    """Token embeddings (B, T, input_size) → (B, up_stride*T, output_size)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = LinearEmbed(cfg.input_size, cfg.output_size)
        self.pre_lookahead_layer = PreLookahead(cfg.output_size, cfg.pre_lookahead_len)
        self.encoders = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_blocks))
        self.up_layer = Upsample(cfg.output_size, cfg.up_stride)
        self.up_embed = LinearEmbed(cfg.input_size, cfg.output_size)
        self.up_encoders = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_up_blocks))
        self.after_norm = nn.LayerNorm(cfg.output_size, eps=EMBED_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.cfg.output_size
        x = self.pre_lookahead_layer(self.embed(x))  # (B, T, C)
        pos = rel_position_table(x.shape[1], d, device=x.device, dtype=x.dtype)
        for layer in self.encoders:
            x = layer(x, pos)
        x = self.up_embed(self.up_layer(x))  # (B, 2T, C)
        pos = rel_position_table(x.shape[1], d, device=x.device, dtype=x.dtype)
        for layer in self.up_encoders:
            x = layer(x, pos)
        return self.after_norm(x)

    def forward_chunk(self, x: torch.Tensor, cache: EncoderCache | None, *, last: bool
                      ) -> tuple[torch.Tensor, EncoderCache]:
        """Stream the next rows: x (B, T+n, input_size), its last n rows (the lookahead) only looked at
        and sent again with the next chunk; on the `last` chunk x is (B, T, input_size) and the
        lookahead is zeros, as offline. Returns (B, up_stride*T, C) and the cache for the next chunk."""
        d, n_first = self.cfg.output_size, len(self.encoders)
        x = self.embed(x)
        if last:
            x = F.pad(x, (0, 0, 0, self.pre_lookahead_layer.lookahead))
        att = cache.att if cache is not None else [None] * (n_first + len(self.up_encoders))
        rows = cache.rows if cache is not None else 0
        x, lookahead = self.pre_lookahead_layer.forward_chunk(x, cache.lookahead if cache is not None else None)
        new_att = []
        pos = rel_position_table(rows + x.shape[1], d, device=x.device, dtype=x.dtype)
        for layer, kv in zip(self.encoders, att[:n_first]):
            x, kv = layer.forward_chunk(x, pos, kv)
            new_att.append(kv)
        x, upsample = self.up_layer.forward_chunk(x, cache.upsample if cache is not None else None)
        x = self.up_embed(x)
        pos = rel_position_table(self.cfg.up_stride * rows + x.shape[1], d, device=x.device, dtype=x.dtype)
        for layer, kv in zip(self.up_encoders, att[n_first:]):
            x, kv = layer.forward_chunk(x, pos, kv)
            new_att.append(kv)
        new_rows = rows + x.shape[1] // self.cfg.up_stride
        return self.after_norm(x), EncoderCache(new_att, lookahead, upsample, new_rows)
