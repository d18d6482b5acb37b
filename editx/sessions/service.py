"""What the HTTP routes and the CLI both do with a session: build the edit of a version, record
its result as a child version, undo, and describe the version tree."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np

from editx.errors import ValidationError
from editx.pipeline.types import EditRequest, PromptAudio
from editx.sessions.store import NewVersion, Position, Session, SessionNotFoundError, SessionStore, Version, check_id

MAX_PAGE = 100  # sessions per listing page


def fresh_seed() -> int:
    """A seed for a request that named none, so the version records how to reproduce it."""
    return int.from_bytes(np.random.default_rng().bytes(7), "little")


@dataclass(frozen=True)
class EditSpec:
    edit_type: str
    edit_info: str | None = None
    text: str | None = None  # paralinguistic: the transcript with its tags
    iterations: int = 1
    seed: int | None = None


def edit_request(store: SessionStore, session_id: str, version_id: str | None,
                 spec: EditSpec) -> tuple[EditRequest, Version]:
    """The EditRequest that edits `version_id` (default: the current version), and that version."""
    if version_id is None:
        version_id = store.get(session_id).current
    parent = store.version(session_id, version_id)
    audio = store.audio(session_id, version_id)
    seed = spec.seed if spec.seed is not None else fresh_seed()
    req = EditRequest(audio, parent.text, spec.edit_type, spec.edit_info, text=spec.text,
                      iterations=spec.iterations, seed=seed)
    return req, parent


def outcome(req, result) -> tuple[int | None, dict | None]:
    """(seed, scores) a version records for `result` of `req`. A verified request may return a
    regenerated attempt: its seed (not the request's) reproduces the audio, and the scores are the
    whole check (`Verification.to_dict()`: verified, error rate, speaker similarity, every attempt)."""
    check = result.verification
    if check is None:
        return req.seed, None
    returned = next((a for a in check.attempts if a.attempt == check.attempt), None)
    return (returned.seed if returned is not None and returned.seed is not None else req.seed), check.to_dict()


def record_edit(store: SessionStore, session_id: str, parent: Version, req: EditRequest, result) -> Version:
    """The edit's output as a new child of `parent`; it becomes the session's current version."""
    said = req.text if req.edit_type == "paralinguistic" and req.text else parent.text
    edit = {"type": req.edit_type, "info": req.edit_info, "text": req.text, "iterations": req.iterations}
    seed, scores = outcome(req, result)
    new = NewVersion("edit", said, PromptAudio(result.audio, result.sample_rate), edit=edit, seed=seed,
                     timeline=result.timeline, scores=scores)
    return store.add_version(session_id, parent.id, new)


def root_version(op: str, text: str, audio: PromptAudio, *, seed: int | None = None, timeline=None,
                 voice_id: str | None = None, scores: dict | None = None) -> NewVersion:
    edit = {"voice_id": voice_id, "text": text} if op == "clone" else None
    return NewVersion(op, text, audio, edit=edit, seed=seed, timeline=timeline, scores=scores)


# ---- listing ------------------------------------------------------------------------------------
def encode_cursor(position: Position) -> str:
    """An opaque page cursor: where the listing stopped (it stays valid if that session is deleted)."""
    created_at, session_id = position
    return base64.urlsafe_b64encode(f"{created_at!r}/{session_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> Position:
    bad = ValidationError(f"cursor {cursor[:60]!r} is not one this server gave out; pass the `next_cursor` of the "
                          "previous page, or no cursor for the first page")
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, session_id = text.partition("/")
        position = (float(created), check_id(session_id, "sess", "session"))
    except (ValueError, UnicodeDecodeError, SessionNotFoundError):
        raise bad from None
    if not math.isfinite(position[0]):
        raise bad
    return position


def list_page(store: SessionStore, limit: int, cursor: str | None) -> dict:
    """One page of the live sessions, newest first: {"object": "list", "data", "has_more", "next_cursor"}."""
    if not 1 <= limit <= MAX_PAGE:
        raise ValidationError(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    after = decode_cursor(cursor) if cursor else None
    entries = store.list(limit + 1, after)  # one more than asked: is there a next page?
    page, more = entries[:limit], len(entries) > limit
    last = page[-1].session if page else None
    return {"object": "list", "data": [e.to_dict() for e in page], "has_more": more,
            "next_cursor": encode_cursor((last.created_at, last.id)) if more and last else None}


def undo(store: SessionStore, session_id: str) -> Session:
    """Make the current version's parent current."""
    session = store.get(session_id)
    parent = store.version(session_id, session.current).parent
    if parent is None:
        raise ValidationError("nothing to undo: the current version is the session's first one")
    return store.set_current(session_id, parent)


def describe(store: SessionStore, session_id: str) -> dict:
    """The session, its versions (oldest first) and their children: the version tree."""
    session = store.get(session_id)
    versions = store.versions(session_id)
    children: dict[str, list[str]] = {v.id: [] for v in versions}
    for v in versions:
        if v.parent in children:
            children[v.parent].append(v.id)
    return {**session.to_dict(), "object": "session",
            "versions": [{**v.to_dict(), "children": children[v.id]} for v in versions]}
