"""The resumable result cache of `eval reconstruction`: one JSON line per (kind, method, render).

Work is cached in the output folder (`results.jsonl`), so a call stops at `max_minutes` and the
next one continues; `settings.json` guards against mixing settings. With `shard=(k, n)` a call
caches into `results-k-of-n.jsonl`, so n processes can share one folder; every call reads all
the folder's result files.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

CACHE_FILE, SETTINGS_FILE = "results.jsonl", "settings.json"


class ResultCache:
    """Per-item results in `results*.jsonl` (one JSON line each), valid for the settings in `settings.json`;
    new results go to `results.jsonl`, or to the shard's own file."""

    def __init__(self, directory: Path, settings: dict[str, Any], shard: tuple[int, int] | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (
            CACHE_FILE if shard is None else f"{Path(CACHE_FILE).stem}-{shard[0]}-of-{shard[1]}.jsonl"
        )
        settings_path = directory / SETTINGS_FILE
        if settings_path.is_file():
            stored = json.loads(settings_path.read_text())
            # Results are keyed by the method (the default setting included), so the default may change.
            changed = [
                key
                for key in settings
                if key not in ("methods", "default_diffusion") and stored.get(key) != settings[key]
            ]
            changed += [
                f"inputs of {method}"
                for method, digest in settings["methods"].items()
                if stored.get("methods", {}).get(method, digest) != digest
            ]
            if changed:
                raise ValueError(
                    f"{directory} holds results made with other settings ({', '.join(changed)}); "
                    f"use another output folder or delete it."
                )
            settings = {**settings, "methods": {**stored.get("methods", {}), **settings["methods"]}}
        text = json.dumps(settings, indent=1) + "\n"
        if not settings_path.is_file() or settings_path.read_text() != text:  # shards starting together write it once
            settings_path.write_text(text)
        self.results: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob(f"{Path(CACHE_FILE).stem}*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.results[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def add(self, key: str, record: dict[str, Any]) -> None:
        """Store one result (appended and flushed at once, so an interrupted call loses nothing finished)."""
        record = {"key": key, **record}
        self.results[key] = record
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def result_key(kind: str, method: str, index: int) -> str:
    return f"{kind}/{method}/{index}"


def digest(*paths: str | os.PathLike | None) -> str:
    """A short hash of the contents of files (folders: every file inside, by relative path)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def transfer_key(default: str, method: str, index: int) -> str:
    """Transfer results depend on the default diffusion setting they were made with."""
    return result_key(f"transfer@{default}", method, index)
