"""editx: a fast, observable serving engine for Step-Audio-EditX."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
