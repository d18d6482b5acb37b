"""Mixed dual-codebook ids → the flow's time-aligned (rows, 2) token pairs (upstream `_reshape`).

Mixed ids come in groups of 5: two vq02 codes (0..1023) then three vq06 codes (1024..5119), one group
per 120 ms. The flow reads 3 rows per group at 25 Hz: column 0 holds the two vq02 codes and the pad
1024, column 1 holds the vq06 codes shifted by +1 (1025..5120), so both columns share one embedding
table of >= 5121 rows. A partial last group is completed with the tail of
[0, 0, 0, 1024, 1024, 1024], exactly as stepvocoder/cosyvoice2/cli/cosyvoice.py `_reshape` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from editx.errors import ValidationError

VQ02_SIZE = 1024  # vq02 codebook; also the column-0 pad id
VQ06_SIZE = 4096
GROUP = 5  # mixed ids per group: 2 vq02 + 3 vq06
ROWS_PER_GROUP = 3  # flow rows per group (25 Hz)
MIXED_VOCAB = VQ02_SIZE + VQ06_SIZE  # mixed ids are 0..5119
VQ02_PAD = VQ02_SIZE  # column 0, third row of each group
VQ06_FLOW_SHIFT = 1  # mixed vq06 id (1024..5119) - 1024 + 1025
_TAIL_FILL = (0, 0, 0, VQ02_SIZE, VQ02_SIZE, VQ02_SIZE)  # upstream pads with its last pad_len items


def flow_rows(n_mixed: int) -> int:
    """Rows `mixed_to_flow_tokens` returns for `n_mixed` ids (a partial group counts as a whole one)."""
    return -(-n_mixed // GROUP) * ROWS_PER_GROUP


def mixed_to_flow_tokens(mixed: Sequence[int] | np.ndarray) -> np.ndarray:
    """Mixed ids (N,) → flow tokens (3*ceil(N/5), 2) int64; raises ValidationError on bad ids."""
    ids = np.asarray(mixed)
    if ids.ndim != 1 or ids.size == 0:
        raise ValidationError(f"speech tokens must be a non-empty 1-D id sequence, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValidationError(f"speech tokens must be integers, got dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    bad = (ids < 0) | (ids >= MIXED_VOCAB)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValidationError(f"speech token {int(ids[first])} at position {first} is outside 0..{MIXED_VOCAB - 1}"
                              " (LM ids must have 65536 subtracted; text tokens must be removed)")
    pad = (-ids.size) % GROUP
    if pad:
        ids = np.concatenate([ids, np.asarray(_TAIL_FILL[len(_TAIL_FILL) - pad:], dtype=np.int64)])
    groups = ids.reshape(-1, GROUP)  # (G, 5)
    out = np.empty((groups.shape[0], ROWS_PER_GROUP, 2), dtype=np.int64)
    out[:, :2, 0] = groups[:, :2]
    out[:, 2, 0] = VQ02_PAD
    out[:, :, 1] = groups[:, 2:] + VQ06_FLOW_SHIFT
    return out.reshape(-1, 2)
