"""Model-directory resolution (the upstream download layout) and the optional download command.

A model dir is the folder that holds `Step-Audio-Tokenizer/` and `Step-Audio-EditX/`, exactly as
`git clone`/`snapshot_download` of the two official repositories leaves them. Nothing here touches
the network unless `download()` is called explicitly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from editx.errors import ModelFilesError

log = logging.getLogger(__name__)

TOKENIZER_DIRNAME = "Step-Audio-Tokenizer"
EDITX_DIRNAME = "Step-Audio-EditX"
COSYVOICE_DIRNAME = "CosyVoice-300M-25Hz"
# Official repositories (same names on Hugging Face and ModelScope).
REPO_IDS = {TOKENIZER_DIRNAME: "stepfun-ai/Step-Audio-Tokenizer", EDITX_DIRNAME: "stepfun-ai/Step-Audio-EditX"}


@dataclass(frozen=True)
class ModelPaths:
    root: Path
    tokenizer_dir: Path
    lm_dir: Path
    cosyvoice_dir: Path

    def files(self) -> list[Path]:
        """Every regular file of the three model folders (for fingerprints), sorted."""
        out: list[Path] = []
        for d in (self.tokenizer_dir, self.lm_dir):
            out.extend(p for p in d.rglob("*") if p.is_file() and ".git" not in p.parts)
        return sorted(set(out))


def resolve_model_dir(root: str | Path) -> ModelPaths:
    """Check the upstream layout under `root`; the error says what is missing and how to get it."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ModelFilesError(
            f"model dir {root} does not exist; download the weights with `editx download {root}` "
            f"or write random-weight fixtures with `editx fixtures make {root}`")
    tok, lm = root / TOKENIZER_DIRNAME, root / EDITX_DIRNAME
    cosy = lm / COSYVOICE_DIRNAME
    missing = [str(p.relative_to(root)) for p in (tok, lm, cosy) if not p.is_dir()]
    if missing:
        raise ModelFilesError(
            f"model dir {root} lacks {', '.join(missing)}; it must hold {TOKENIZER_DIRNAME}/ and "
            f"{EDITX_DIRNAME}/ (with {COSYVOICE_DIRNAME}/ inside) as downloaded from "
            f"{REPO_IDS[TOKENIZER_DIRNAME]} and {REPO_IDS[EDITX_DIRNAME]}")
    return ModelPaths(root=root, tokenizer_dir=tok, lm_dir=lm, cosyvoice_dir=cosy)


def download(dest: str | Path, source: str = "huggingface") -> ModelPaths:
    """Download both official repositories into `dest` (needs network and the hub client)."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for dirname, repo_id in REPO_IDS.items():
        target = dest / dirname
        log.info("downloading %s from %s into %s", repo_id, source, target)
        if source == "huggingface":
            try:
                from huggingface_hub import snapshot_download
            except ImportError as exc:
                raise ModelFilesError("downloading needs `pip install huggingface_hub`") from exc
            snapshot_download(repo_id=repo_id, local_dir=str(target))
        elif source == "modelscope":
            try:
                from modelscope import snapshot_download as ms_download
            except ImportError as exc:
                raise ModelFilesError("downloading from ModelScope needs `pip install modelscope`") from exc
            ms_download(repo_id, local_dir=str(target))
        else:
            raise ModelFilesError(f"unknown download source {source!r}; use huggingface or modelscope")
    return resolve_model_dir(dest)
