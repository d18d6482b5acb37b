"""Dialogue scripts: many voices, inline edits and pauses in one request (parse, plan, render, captions)."""
