"""Reading the official `.pt` checkpoints (flow.pt, hift.pt, the Paraformer model.pt): one function,
one-line errors that say what is wrong with the file (missing, a Git LFS pointer, damaged)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from editx.errors import ModelFilesError

LFS_MAGIC = b"version https://git-lfs"


def is_lfs_pointer(path: Path) -> bool:
    """A Git LFS pointer file (a `git clone` without git-lfs leaves these instead of the weights)."""
    try:
        if path.stat().st_size > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def load_torch_file(path: Path, what: str):
    """torch.load(weights_only) of an official checkpoint, memory-mapped when it is a zip archive (the
    released format); the legacy pre-zip format is read whole. Raises ModelFilesError in one line."""
    path = Path(path)
    if not path.is_file():
        raise ModelFilesError(f"{path} not found ({what}); re-download the model folder")
    if is_lfs_pointer(path):
        raise ModelFilesError(f"{path} is a Git LFS pointer, not the {what} (cloned without git-lfs); "
                              "run `git lfs pull` there or `editx download`")
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) serialization cannot be memory-mapped
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign pickle
        first = (str(exc).splitlines() or [""])[0][:200]
        if isinstance(exc, pickle.UnpicklingError):  # torch's text here is advice about weights_only
            first = "it is damaged or holds objects other than tensors"
        raise ModelFilesError(f"cannot read {path} as the {what} ({type(exc).__name__}: {first}); the file is "
                              "damaged or incomplete: re-download it") from exc
