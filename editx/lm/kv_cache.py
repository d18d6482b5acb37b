"""Static, preallocated K/V cache for the Step1 LM, and prefix snapshots that skip a prompt's prefill.

One cache holds `batch` rows (request slots) × `max_len` positions for every layer. Row b keeps its
token at position p in slot p, so ALiBi distances are the slots' differences and rows of different
lengths never shift each other. One extra scratch slot (index `max_len`) absorbs writes for padding
tokens in ragged batched prefills; it is never read.

A `PrefixSnapshot` is a copy of the K/V of the first P positions of one row together with the P
token ids they were computed from. Restoring it into a row and prefilling only the rest of a prompt
that starts with those ids gives the same K/V as prefilling the whole prompt (ALiBi has no absolute
position term, and K/V at a position depend only on the tokens up to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from editx.errors import ValidationError


@dataclass(frozen=True)
class PrefixSnapshot:
    """K/V of a prompt prefix: k, v are (layers, groups, P, head_dim); tokens are the P ids."""

    tokens: tuple[int, ...]
    k: torch.Tensor
    v: torch.Tensor

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() * 2

    def matches(self, prompt: list[int] | tuple[int, ...]) -> bool:
        return len(prompt) >= self.length and tuple(prompt[: self.length]) == self.tokens

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Plain tensors (e.g. for a safetensors cache entry); inverse of `from_tensors`."""
        return {"k": self.k.contiguous(), "v": self.v.contiguous(),
                "tokens": torch.tensor(self.tokens, dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> PrefixSnapshot:
        k, v, tokens = tensors["k"], tensors["v"], tensors["tokens"]
        if k.shape != v.shape or k.dim() != 4 or k.shape[2] != tokens.numel():
            raise ValidationError(f"inconsistent prefix snapshot: k {tuple(k.shape)}, v {tuple(v.shape)}, "
                                  f"{tokens.numel()} tokens")
        return cls(tokens=tuple(int(t) for t in tokens.tolist()), k=k, v=v)


class KVCache:
    """k[i], v[i]: layer i's (batch, groups, max_len + 1, head_dim) views into two big buffers."""

    def __init__(self, n_layers: int, batch: int, max_len: int, n_groups: int, head_dim: int, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if batch < 1 or max_len < 1:
            raise ValidationError(f"KV cache needs batch >= 1 and max_len >= 1, got {batch}, {max_len}")
        shape = (n_layers, batch, n_groups, max_len + 1, head_dim)
        self._k = torch.zeros(shape, device=device, dtype=dtype)
        self._v = torch.zeros(shape, device=device, dtype=dtype)
        self.k = list(self._k.unbind(0))  # per-layer views, built once
        self.v = list(self._v.unbind(0))
        self.max_len = max_len
        self._sqrt_rev: torch.Tensor | None = None  # decode_bias's tables, made at the first decode
        self._bias: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model, batch: int, max_len: int) -> KVCache:
        cfg = model.config
        return cls(cfg.num_hidden_layers, batch, max_len, cfg.num_attention_groups, cfg.head_dim,
                   device=model.device, dtype=_compute_dtype(model))

    @property
    def batch(self) -> int:
        return self._k.shape[1]

    @property
    def scratch_slot(self) -> int:
        return self.max_len

    @property
    def nbytes(self) -> int:
        return self._k.numel() * self._k.element_size() * 2

    def decode_bias(self, slopes: torch.Tensor, positions: list[int], kv_len: int,
                    dtype: torch.dtype) -> torch.Tensor:
        """The ALiBi bias of one decode step, (B, H, 1, kv_len): row b's query at positions[b].

        Equals `model.alibi_bias` bit for bit (the same fp32 products of -slope and sqrt of an exact
        integer distance), without building the distance matrix each step: a reversed table
        sqrt(max_len - i) made once per cache gives every row's distances as one slice, written
        into a preallocated buffer.
        """
        B, H = len(positions), slopes.numel()
        if self._bias is None or self._bias.numel() < self.batch * H * (self.max_len + 1):
            device = self._k.device
            dist = torch.arange(self.max_len, -1, -1, device=device, dtype=torch.int64)
            self._sqrt_rev = dist.to(torch.float32).sqrt_()
            self._bias = torch.empty(self.batch * H * (self.max_len + 1), device=device, dtype=torch.float32)
        bias = self._bias[: B * H * kv_len].view(B, H, kv_len)
        neg = -slopes.to(torch.float32)[:, None]  # (H, 1)
        for b, p in enumerate(positions):
            n = min(p + 1, kv_len)  # keys 0..p; above the query's own position: -inf
            torch.mul(neg, self._sqrt_rev[self.max_len - p: self.max_len - p + n], out=bias[b, :, :n])
            if n < kv_len:
                bias[b, :, n:] = float("-inf")
        bias = bias[:, :, None]  # (B, H, 1, S)
        return bias if dtype == torch.float32 else bias.to(dtype)

    def snapshot(self, row: int, tokens: list[int] | tuple[int, ...]) -> PrefixSnapshot:
        """Copy row's K/V for positions 0..len(tokens)-1 (the caller vouches they hold `tokens`)."""
        n = len(tokens)
        if not 0 < n <= self.max_len:
            raise ValidationError(f"prefix length must be in 1..{self.max_len}, got {n}")
        return PrefixSnapshot(tokens=tuple(int(t) for t in tokens),
                              k=self._k[:, row, :, :n].clone(), v=self._v[:, row, :, :n].clone())

    def restore(self, row: int, snap: PrefixSnapshot, length: int | None = None) -> int:
        """Copy the first `length` (default all) snapshot positions into `row`; returns that length."""
        n = snap.length if length is None else length
        if n > self.max_len or n > snap.length:
            raise ValidationError(f"cannot restore {n} prefix positions into a cache of {self.max_len}")
        if snap.k.shape[0] != self._k.shape[0] or snap.k.shape[1:] != (self._k.shape[2], snap.length,
                                                                        self._k.shape[4]):
            raise ValidationError("prefix snapshot was made for a different model; recompute it")
        self._k[:, row, :, :n].copy_(snap.k[:, :, :n])
        self._v[:, row, :, :n].copy_(snap.v[:, :, :n])
        return n


def _compute_dtype(model) -> torch.dtype:
    # Quantized models keep fp32 activations; otherwise the cache follows the weights.
    dtype = model.dtype
    return dtype if dtype.is_floating_point else torch.float32
