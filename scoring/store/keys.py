"""Cache keys, computed from the inputs (never written by hand): the same inputs always give the same key."""
from __future__ import annotations

import hashlib
import json


def key_of(obj) -> str:
    """16 hex digits of sha256 over ``obj`` as canonical JSON (sorted keys; anything unknown as str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
