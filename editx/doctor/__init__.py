"""`editx doctor`: prove a model folder will load before anything is loaded.

`check(root)` reads only headers and indexes (safetensors headers, torch zip directories, ONNX graph
inputs, .npy headers, configs) and runs them through the loaders' own key maps and rules on the
meta device, so it takes seconds on the real 10 GB folder and agrees with what loading would do.
It returns one Finding per problem, each naming the file and how to fix it. The editx backend and
`editx serve` run the same check first and refuse to start with the same lines (`require_loadable`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from editx.errors import ModelFilesError
from editx.hub import COSYVOICE_DIRNAME, EDITX_DIRNAME, TOKENIZER_DIRNAME

log = logging.getLogger(__name__)

FIX_DOWNLOAD = "re-run `editx download DIR` (it fetches what is missing or changed, then checks again)"


@dataclass(frozen=True)
class Finding:
    """One problem: where (relative to the checked folder), what, and how to fix it."""

    where: str
    problem: str
    fix: str = FIX_DOWNLOAD
    severity: str = "error"  # "error" (will not load) or "note" (loads; worth knowing)

    def line(self) -> str:
        return f"{self.severity.upper()} {self.where}: {self.problem} [fix: {self.fix}]"


@dataclass(frozen=True)
class Report:
    root: Path
    findings: tuple[Finding, ...]
    checked: tuple[str, ...] = field(default=())
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def lines(self) -> list[str]:
        out = [f.line().replace("editx download DIR", f"editx download {self.root}") for f in self.findings]
        verdict = "will load" if self.ok else "will NOT load"
        out.append(f"{self.root}: {verdict} ({len(self.checked)} files checked, "
                   f"{sum(f.severity == 'error' for f in self.findings)} error(s), {self.seconds:.1f} s)")
        return out


def _layout(root: Path) -> list[Finding]:
    """Folder-level problems: missing, passed the wrong folder, or nested one level too deep."""
    if not root.is_dir():
        return [Finding(str(root), "does not exist or is not a folder",
                        f"`editx download {root}`, or pass the folder that holds {TOKENIZER_DIRNAME}/ and "
                        f"{EDITX_DIRNAME}/")]
    tops = (TOKENIZER_DIRNAME, EDITX_DIRNAME)
    if all((root / t).is_dir() for t in tops):
        out = []
        for inner in (f"{TOKENIZER_DIRNAME}/{TOKENIZER_DIRNAME}", f"{EDITX_DIRNAME}/{EDITX_DIRNAME}",
                      f"{EDITX_DIRNAME}/{COSYVOICE_DIRNAME}/{COSYVOICE_DIRNAME}"):
            if (root / inner).is_dir():
                outer = inner.rsplit("/", 1)[0]
                out.append(Finding(inner, "a folder nested one level too deep (a download into an existing "
                                          "folder of the same name)",
                                   f"move the contents of {inner}/ up into {outer}/"))
        if (root / EDITX_DIRNAME).is_dir() and not (root / EDITX_DIRNAME / COSYVOICE_DIRNAME).is_dir() \
                and not out:
            out.append(Finding(f"{EDITX_DIRNAME}/{COSYVOICE_DIRNAME}", "missing (the decoder ships inside "
                               f"{EDITX_DIRNAME}/)"))
        return out
    if root.name in tops or (root / "config.json").is_file() or (root / "speech_tokenizer_v1.onnx").is_file():
        return [Finding(str(root), f"this is the {root.name} folder itself, not the folder that holds both",
                        f"pass its parent folder {root.parent}")]
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        if all((child / t).is_dir() for t in tops):
            return [Finding(str(root), f"the model folders are one level too deep, in {child.name}/",
                            f"pass {child} instead (or move its contents up)")]
    return [Finding(f"{t}/", "missing") for t in tops if not (root / t).is_dir()]


def check(root: str | Path) -> Report:
    """Every finding for the model folder `root` (the folder holding both official downloads)."""
    from editx.doctor import components

    t0 = time.perf_counter()
    root = Path(root).expanduser()
    findings = _layout(root)
    checked: list[str] = []
    if not findings:
        findings = components.check_all(root, checked)
    report = Report(root, tuple(findings), tuple(checked), time.perf_counter() - t0)
    log.debug("model folder checked", extra={"model_dir": str(root), "ok": report.ok,
                                            "findings": len(findings), "seconds": round(report.seconds, 2)})
    return report


def require_loadable(root: str | Path) -> Report:
    """Raise ModelFilesError carrying the doctor's lines unless `root` will load."""
    report = check(root)
    if not report.ok:
        lines = report.lines()[:-1]
        if len(lines) == 1:
            raise ModelFilesError(lines[0])
        raise ModelFilesError(f"the model folder {report.root} will not load ({len(lines)} problems; "
                              "`editx doctor` prints the same list):\n" + "\n".join(lines))
    for f in report.findings:
        log.warning("%s", f.line())
    return report


__all__ = ["Finding", "Report", "check", "require_loadable"]
