"""The digests the warehouse rebuild has checked, kept beside the warehouse so an unchanged file is hashed once.

A lake file is never rewritten in place (a new version gets a new name), so a local file whose name,
size and mtime are those it had when its SHA-256 last matched the recorded one needs no new hash; an
object of an S3 lake is immutable by name, so its name and recorded digest are enough. A local file
modified less than ``RACY_S`` before it was hashed is not cached: the clock behind mtimes is coarse, and
a change in the same tick would keep the stamp (git's "racy" index entries). The cache is one
small JSON file replaced atomically; a missing, unreadable or foreign one is ignored (every file is
verified again) and rewritten by the next rebuild.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

from cloudopt_pipelines.storage.lake import Lake

CACHE_FORMAT = 1
RACY_S = 2.0


def cache_path(warehouse: Path) -> Path:
    """Where the verified-digest cache of the warehouse at ``warehouse`` lives: beside it."""
    return warehouse.with_name(warehouse.name + ".digests.json")


class FileVerifier:
    """Checks lake files against the SHA-256 recorded when they were written, through the cache at ``path``.

    ``verify_all`` ignores what the cache holds (every file is hashed again). ``save`` keeps only the files
    checked since this verifier was made, so the cache never outgrows the lake.
    """

    def __init__(self, path: Path, verify_all: bool = False) -> None:
        self.path = path
        self._known = {} if verify_all else _load(path)
        self._seen: dict[str, dict] = {}
        self.hashed = 0
        self.from_cache = 0
        self.without_digest = 0

    def damage(self, lake: Lake, file: Path | str) -> tuple[str, str] | None:
        """None while ``file`` has the bytes it was written with, else (its SHA-256 now, the one recorded).
        A file without a recorded digest (written before digests existed) passes unchecked; one that is gone
        raises ``FileNotFoundError``."""
        name = str(file)
        stamp = lake.file_stamp(file)  # first: FileNotFoundError when a newer version replaced the file
        recorded = lake.recorded_sha256(file)
        if recorded is None:
            self.without_digest += 1
            return None
        entry = {"sha256": recorded, "stamp": list(stamp) if stamp is not None else None}
        if self._known.get(name) == entry:
            self.from_cache += 1
            self._seen[name] = entry
            return None
        hashed_at_ns = time.time_ns()
        actual = lake.actual_sha256(file)
        self.hashed += 1
        if actual != recorded:
            return (actual, recorded)
        if stamp is None or stamp[1] <= hashed_at_ns - int(RACY_S * 1e9):
            self._seen[name] = entry
        return None

    def save(self) -> None:
        """Replace the cache with the files verified intact by this verifier (atomic: write, then rename)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "files": self._seen}, sort_keys=True))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)


def _load(path: Path) -> dict[str, dict]:
    """The cache's entries; empty when it is missing or is not a cache this version wrote."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(content, dict) or content.get("format") != CACHE_FORMAT:
        return {}
    files = content.get("files")
    if not isinstance(files, dict):
        return {}
    return {name: entry for name, entry in files.items() if isinstance(entry, dict)}
