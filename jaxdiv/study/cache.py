"""The stage cache that `jaxdiv run` (the study and the self-consumption experiment) keeps under its
workdir: each stage's output is stored under a content hash of everything it depends on, so a
rerun finds it and a changed input gets a new key."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxdiv import configlib
from jaxdiv.io import atomic_write_text


def content_key(*parts: Any) -> str:
    """Content hash of configs and values: the cache key of a stage's output."""
    return configlib.content_hash([configlib.to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts])


def read_json(path: Path) -> dict | None:
    """A cached record, or None when the stage has not stored it yet."""
    return json.loads(path.read_text()) if path.is_file() else None


def write_json(path: Path, payload: dict) -> None:
    """Store a record atomically (a killed run never leaves half of one)."""
    atomic_write_text(path, json.dumps(payload, indent=1, default=float))
