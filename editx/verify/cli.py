"""The CLI's verification options (clone and edit) and the summary line it prints for a result."""

from __future__ import annotations

import argparse


def add_verify_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("verification (needs editx[quality])")
    g.add_argument("--verify", action="store_true",
                   help="check the output's words (ASR) and voice; regenerate below the thresholds")
    g.add_argument("--max-wer", type=float, default=None, help="highest WER (CER for zh/ja) accepted, 0..1")
    g.add_argument("--min-speaker-sim", type=float, default=None, help="lowest speaker similarity, 0..1 (0: off)")
    g.add_argument("--verify-attempts", type=int, default=None, help="generations in all, 1..5")
    g.add_argument("--language", default=None, help="Whisper code of the text (default: from its script)")


def verify_option(args: argparse.Namespace, config):
    """What Engine.run/stream take as `verify`: None (the config's default, EDITX_VERIFY) or a policy."""
    wanted = args.verify or any(v is not None for v in (args.max_wer, args.min_speaker_sim, args.verify_attempts,
                                                        args.language))
    if not wanted:
        return None
    from editx.verify.policy import VerifyPolicy

    return VerifyPolicy.from_config(config).with_(max_wer=args.max_wer, min_speaker_sim=args.min_speaker_sim,
                                                  attempts=args.verify_attempts, language=args.language)


def summary_lines(result) -> list[str]:
    """'heard in the input: ...' and 'verified wer=0.000 speaker_sim=0.894 attempt 1/1 (heard: ...)'."""
    lines = []
    if result.input_transcript is not None:
        lines.append(f"input transcript (ASR): {result.input_transcript}")
    v = result.verification
    if v is not None:
        lines.append(f"{v.summary()} (heard: {v.transcript!r})" + (f"; {v.note}" if v.note else ""))
    return lines
