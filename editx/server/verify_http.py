"""Output verification over HTTP: the request's `editx.verify` field, response headers, SSE fields.

Thresholds are checked by VerifyPolicy (not by pydantic ranges) so a bad one is a 400 naming its range.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field


class VerifyFields(BaseModel):
    """`editx.verify` as an object: check the output, with these thresholds over the server's defaults."""

    model_config = ConfigDict(extra="forbid")
    max_wer: float | None = Field(None, description="highest word (CER for zh/ja) error rate accepted, 0..1")
    min_speaker_sim: float | None = Field(None, description="lowest speaker similarity accepted, 0..1 (0: off)")
    attempts: int | None = Field(None, description="generations in all, each with a new seed, 1..5")
    language: str | None = Field(None, max_length=8, description="Whisper code of the text (default: its script)")


VerifySpec = bool | VerifyFields | None  # None: the server default (EDITX_VERIFY); false: off; true: defaults


def policy_for(engine, spec: VerifySpec):
    """`editx.verify` → what Engine.submit takes (None, False or a VerifyPolicy)."""
    if spec is None or spec is False:
        return spec
    from editx.verify.policy import VerifyPolicy

    base = VerifyPolicy.from_config(engine.config)
    if spec is True:
        return base
    return base.with_(**spec.model_dump())


async def load_models_if(engine, verify, needs_transcript: bool) -> None:
    """Load the ASR and speaker models off the event loop when this request will use them (the first
    such request pays for the load; later ones find them loaded)."""
    if verify is None:
        verify = engine.config.verify
    if verify is not False or needs_transcript:
        from starlette.concurrency import run_in_threadpool

        from editx.verify.chain import verifier_of

        await run_in_threadpool(verifier_of(engine).models)


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def verification_headers(result) -> dict[str, str]:
    """X-Editx-Verified / -WER (or -CER) / -Speaker-Sim / -Attempts, and X-Editx-Input-Transcript
    (percent-encoded UTF-8) when the request's transcript was made by the ASR."""
    headers: dict[str, str] = {}
    v = result.verification
    if v is not None:
        headers.update({"X-Editx-Verified": "true" if v.verified else "false",
                        f"X-Editx-{v.metric.upper()}": _num(v.error_rate),
                        "X-Editx-Speaker-Sim": _num(v.speaker_sim) or "off",
                        "X-Editx-Attempts": f"{v.attempt}/{len(v.attempts)}",
                        "X-Editx-Heard": quote(v.transcript, safe=" ")})
    if result.input_transcript is not None:
        headers["X-Editx-Input-Transcript"] = quote(result.input_transcript, safe=" ")
    return headers


def verification_fields(result) -> dict[str, Any]:
    """The scores for a JSON body or the SSE done event."""
    out: dict[str, Any] = {}
    if result.verification is not None:
        out["verification"] = result.verification.to_dict()
    if result.input_transcript is not None:
        out["input_transcript"] = result.input_transcript
    return out
