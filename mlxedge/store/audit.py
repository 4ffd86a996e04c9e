"""The append-only audit log, `$MLXEDGE_HOME/audit.jsonl`: one JSON object per store change or load.

`record(event, **fields)` is the one writer (the server adds route, key_id, token counts, duration);
prompts and replies are never passed here by the store. One `os.write` of a whole line on an
O_APPEND descriptor under an exclusive flock, so concurrent writers never interleave.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from ..errors import MlxEdgeError
from .layout import home

LOG = "audit.jsonl"


def log_path() -> Path:
    return home() / LOG


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def record(event: str, model: str | None = None, outcome: str = "ok", **fields) -> dict:
    """Append one entry: time, event, model, outcome and any JSON-serializable `fields`."""
    entry = {"time": now(), "event": event, "model": model, "outcome": outcome, **fields}
    line = (json.dumps(entry, ensure_ascii=False, sort_keys=False) + "\n").encode()
    try:
        log_path().parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log_path(), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError as e:  # the log must not take the operation down with it (e.g. disk full)
        print(f"warning: cannot append to the audit log {log_path()}: {e.strerror or e}", file=sys.stderr)
    return entry


def parse_since(text: str) -> datetime:
    """`30m`, `2h`, `7d` (ago) or an ISO time (UTC when no zone is given)."""
    m = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if m:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: int(m.group(1))})
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MlxEdgeError(f"--since {text!r}: expected e.g. 30m, 2h, 7d or 2026-12-04T10:00") from None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def read(since: datetime | None = None) -> list[dict]:
    """The entries at or after `since` (all when None); a torn last line is skipped."""
    out = []
    try:
        lines = log_path().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        try:
            entry = json.loads(line)
            t = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        if since is None or t >= since:
            out.append(entry)
    return out


def summarize(entries: list[dict]) -> dict:
    """Counts per event, per model and per key (requests, tokens), and the failures."""
    by_event: dict[str, int] = defaultdict(int)
    by_model: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    by_key: dict[str, dict] = defaultdict(lambda: defaultdict(int))
    failures = []
    for e in entries:
        by_event[e.get("event", "?")] += 1
        tokens = int(e.get("prompt_tokens") or 0) + int(e.get("completion_tokens") or 0)
        for table, key in ((by_model, e.get("model")), (by_key, e.get("key_id"))):
            if key is None:
                continue
            row = table[key]
            row[e.get("event", "?")] += 1
            row["tokens"] += tokens
            row["failures"] += e.get("outcome") != "ok"
        if e.get("outcome") != "ok":
            failures.append({k: e.get(k) for k in ("time", "event", "model", "outcome", "error") if k in e})
    plain = lambda t: {k: dict(v) for k, v in sorted(t.items())}  # noqa: E731
    return {"entries": len(entries), "by_event": dict(sorted(by_event.items())), "by_model": plain(by_model),
            "by_key": plain(by_key), "failures": failures}
