"""Model-directory resolution (the upstream download layout) and the optional download command.

A model dir is the folder that holds `Step-Audio-Tokenizer/` and `Step-Audio-EditX/`, exactly as
`git clone`/`snapshot_download` of the two official repositories leaves them. Nothing here touches
the network unless `download()` is called explicitly; it fetches pinned revisions (REVISIONS) so that
what lands on disk is what editx was checked against, and `editx download` then runs `editx doctor`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from editx.errors import ModelFilesError

log = logging.getLogger(__name__)

TOKENIZER_DIRNAME = "Step-Audio-Tokenizer"
EDITX_DIRNAME = "Step-Audio-EditX"
COSYVOICE_DIRNAME = "CosyVoice-300M-25Hz"
# Official repositories (same names on Hugging Face and ModelScope).
REPO_IDS = {TOKENIZER_DIRNAME: "stepfun-ai/Step-Audio-Tokenizer", EDITX_DIRNAME: "stepfun-ai/Step-Audio-EditX"}
# Pinned Hugging Face commits. Step-Audio-EditX 7f3de603 is the 2025-11-28 checkpoint, the one the
# upstream code editx follows (aacb90a, 10 paralinguistic tags) serves; the repository's main branch
# later moved to a 2026-01-23 checkpoint (5fe2f8a0, "expanded sound tags", a changed config.json)
# that editx has not been checked against. Step-Audio-Tokenizer af7e5a3e has not changed since release.
# (Commit ids as public third-party download manifests pin them; no hub is reachable where editx is built.)
REVISIONS = {TOKENIZER_DIRNAME: "af7e5a3ec06175a7facae9d4100073d6e4dbb36c",
             EDITX_DIRNAME: "7f3de603ae46c96dff6f06f47b1d5a45aabd34fe"}
SOURCES = ("huggingface", "modelscope")
# downloader(repo_id, revision or None, local_dir): fetch one repository snapshot into local_dir.
Downloader = Callable[[str, str | None, Path], None]


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


def _huggingface(repo_id: str, revision: str | None, local_dir: Path) -> None:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelFilesError("downloading needs `pip install huggingface_hub`") from exc
    snapshot_download(repo_id=repo_id, revision=revision, local_dir=str(local_dir))


def _modelscope(repo_id: str, revision: str | None, local_dir: Path) -> None:
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise ModelFilesError("downloading from ModelScope needs `pip install modelscope`") from exc
    kwargs = {"revision": revision} if revision else {}
    snapshot_download(repo_id, local_dir=str(local_dir), **kwargs)


def download_plan(dest: str | Path, source: str = "huggingface",
                  revisions: dict[str, str | None] | None = None) -> list[tuple[str, str | None, Path]]:
    """(repo_id, revision, local_dir) per repository. Hugging Face gets the pinned commits unless
    `revisions` overrides them; ModelScope has its own commit ids, so it is pinned only when asked."""
    if source not in SOURCES:
        raise ModelFilesError(f"unknown download source {source!r}; use {' or '.join(SOURCES)}")
    dest = Path(dest).expanduser()
    given = {k: v for k, v in (revisions or {}).items() if v}
    plan = []
    for dirname, repo_id in REPO_IDS.items():
        revision = given.get(dirname, REVISIONS[dirname] if source == "huggingface" else None)
        if revision is None:
            log.warning("downloading %s from %s without a pinned revision (the pins are Hugging Face commits)",
                        repo_id, source)
        plan.append((repo_id, revision, dest / dirname))
    return plan


def download(dest: str | Path, source: str = "huggingface", *, revisions: dict[str, str | None] | None = None,
             downloader: Downloader | None = None) -> Path:
    """Download both official repositories into `dest` (needs network and the hub client); returns `dest`.
    Check the result with `editx.doctor.check(dest)` (the CLI does)."""
    plan = download_plan(dest, source, revisions)
    fetch = downloader or (_huggingface if source == "huggingface" else _modelscope)
    for repo_id, revision, target in plan:
        target.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s@%s from %s into %s", repo_id, revision or "latest", source, target)
        try:
            fetch(repo_id, revision, target)
        except ModelFilesError:
            raise
        except Exception as exc:  # hub clients raise their own (HTTP, revision, disk) errors
            first = (str(exc).splitlines() or [""])[0][:200]
            raise ModelFilesError(f"downloading {repo_id}@{revision or 'latest'} into {target} failed "
                                  f"({type(exc).__name__}: {first}); check the network and the revision, "
                                  "then run the same command again (finished files are kept)") from exc
    return Path(dest).expanduser()
