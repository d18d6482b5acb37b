"""What the HTTP routes and the CLI both do with a session: build the edit of a version, record
its result as a child version, undo, and describe the version tree."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from editx.errors import ValidationError
from editx.pipeline.types import EditRequest, PromptAudio
from editx.sessions.store import NewVersion, Session, SessionStore, Version


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


def record_edit(store: SessionStore, session_id: str, parent: Version, req: EditRequest, result) -> Version:
    """The edit's output as a new child of `parent`; it becomes the session's current version."""
    said = req.text if req.edit_type == "paralinguistic" and req.text else parent.text
    edit = {"type": req.edit_type, "info": req.edit_info, "text": req.text, "iterations": req.iterations}
    new = NewVersion("edit", said, PromptAudio(result.audio, result.sample_rate), edit=edit, seed=req.seed,
                     timeline=result.timeline)
    return store.add_version(session_id, parent.id, new)


def root_version(op: str, text: str, audio: PromptAudio, *, seed: int | None = None, timeline=None,
                 voice_id: str | None = None) -> NewVersion:
    edit = {"voice_id": voice_id, "text": text} if op == "clone" else None
    return NewVersion(op, text, audio, edit=edit, seed=seed, timeline=timeline)


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
