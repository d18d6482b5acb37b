"""Rebuild the real-voice set (data/real-voices/*.flac) from the source recordings the manifest names.

The FLAC files are not in the repository (see data/real-voices/README.md). This script never goes to
the network: it converts source files you already have, from either

  --git OWNER/NAME=GIT_DIR  (repeatable) a clone of a source repository; each clip's file is read at
                            the manifest's commit with `git show COMMIT:PATH`, or
  --sources DIR             a folder holding the source files under their repository paths
                            (DIR/OWNER/NAME/PATH), e.g. as `--print-urls` tells you to download them.

`--print-urls` prints one download line per clip (for a user with network) and exits.

Conversion (as the manifest says): decode (libsndfile, FFmpeg as a fallback: editx.audio.io), channels
averaged to mono, resampled to 16 kHz with soxr (quality "HQ"), scaled down to a peak of 0.99 when it
is louder, written as 16-bit FLAC. Each result is checked against the manifest: `sha256` is the FLAC
file's hash, `pcm_sha256` the hash of its decoded 16-bit samples (what the bench checks: an encoder or
decoder version that changes the FLAC bytes but not the audio still passes).
Run from the repo root: `python scripts/fetch_real_voices.py --git stepfun-ai/Step-Audio-EditX=/path/.git ...`
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from editx.bench_voices import convert_clip, pcm_sha256

SET = Path(__file__).resolve().parents[1] / "data" / "real-voices"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"


def _source_bytes(src: dict, gits: dict[str, Path], sources: Path | None) -> bytes | None:
    if src["repo"] in gits:
        out = subprocess.run(["git", "--git-dir", str(gits[src["repo"]]), "show", f"{src['commit']}:{src['path']}"],
                             capture_output=True, check=False)
        return out.stdout if out.returncode == 0 else None
    if sources is not None:
        path = sources / src["repo"] / src["path"]
        return path.read_bytes() if path.is_file() else None
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--git", action="append", default=[], metavar="OWNER/NAME=GIT_DIR")
    ap.add_argument("--sources", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=SET, help="where the FLAC files go (default: data/real-voices)")
    ap.add_argument("--manifest", type=Path, default=SET / "manifest.json")
    ap.add_argument("--print-urls", action="store_true", help="print a download command per clip and exit")
    args = ap.parse_args(argv)
    clips = json.loads(args.manifest.read_text(encoding="utf-8"))["clips"]
    if args.print_urls:
        for c in clips:
            s = c["source"]
            print(f"curl -fL --create-dirs -o {s['repo']}/{s['path']} {RAW.format(**s)}")
        return 0
    gits = {k: Path(v) for k, v in (g.split("=", 1) for g in args.git)}
    args.out.mkdir(parents=True, exist_ok=True)
    bad = 0
    for c in clips:
        data = _source_bytes(c["source"], gits, args.sources)
        if data is None:
            print(f"{c['id']}: source {c['source']['repo']}:{c['source']['path']} not found", file=sys.stderr)
            bad += 1
            continue
        flac = convert_clip(data, name=c["source"]["path"])
        (args.out / c["file"]).write_bytes(flac)
        pcm_ok = pcm_sha256(flac) == c.get("pcm_sha256")
        print(f"{c['id']}: {len(flac)} bytes, PCM {'matches' if pcm_ok else 'DIFFERS from'} the manifest")
        bad += not pcm_ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
