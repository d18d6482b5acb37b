"""Verified output: check each clone or edit's words (ASR) and voice (speaker similarity), retry, report.

`VerifyPolicy` says what a request asks for; `Verification` (on `Result.verification`) what it got;
`chain` runs the attempts around the Engine; `models` holds the pluggable ASR and speaker models;
`text` is the one normalisation every score uses. See docs/VERIFY.md.
"""

from editx.verify.policy import AttemptScore, Verification, VerifyPolicy

__all__ = ["AttemptScore", "Verification", "VerifyPolicy"]
