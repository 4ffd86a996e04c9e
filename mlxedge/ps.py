"""`mlxedge ps [--host URL] [--json] [--api-key KEY]`: the models a running server has loaded, as
`ollama ps` shows them (from its `GET /api/ps`): name, id, size, backend, context, until."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import urlsplit

from .errors import MlxEdgeError
from .list import human_size

DEFAULT_HOST = "http://127.0.0.1:8080"  # `mlxedge serve`'s default address
FOREVER = datetime(2100, 1, 1, tzinfo=timezone.utc)  # the server's expiry for a model kept loaded


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=f"the server's URL (default {DEFAULT_HOST})")
    p.add_argument("--json", action="store_true", help="the server's answer as JSON")
    p.add_argument("--api-key", help="sent as `Authorization: Bearer KEY` (a server started with keys)")
    p.add_argument("--api-key-file", help="read the API key from this file")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the server (default 10)")


def base_url(host: str) -> str:
    url = host.strip().rstrip("/")
    url = url if "://" in url else f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MlxEdgeError(f"--host {host!r}: expected a URL such as {DEFAULT_HOST}")
    return url


def fetch(url: str, api_key: str | None = None, timeout: float = 10.0) -> list[dict]:
    """The server's loaded models (`GET /api/ps`); one line when it is not there or refuses."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the server
    try:
        with opener.open(urllib.request.Request(f"{url}/api/ps", headers=headers), timeout=timeout) as r:
            body = r.read(16 << 20)
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise MlxEdgeError(f"the server at {url} wants an API key: pass --api-key KEY (or --api-key-file)") \
                from None
        raise MlxEdgeError(f"the server at {url} answered HTTP {e.code} to GET /api/ps") from None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise MlxEdgeError(f"no server running at {url} ({getattr(reason, 'strerror', None) or reason}); "
                           f"start one with `mlxedge serve`") from None
    try:
        models = json.loads(body)["models"]
        if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise MlxEdgeError(f"{url}/api/ps did not answer as an mlxedge or Ollama server") from None
    return models


def until(expires_at: str | None, now: datetime | None = None) -> str:
    """'4 minutes from now', 'Forever' (a model kept loaded) or 'Stopping...', as `ollama ps` says."""
    try:
        when = datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    except ValueError:
        return "-"
    when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if when >= FOREVER:
        return "Forever"
    left = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if left <= 0:
        return "Stopping..."
    unit, seconds = next((u, s) for u, s in (("hour", 3600), ("minute", 60), ("second", 1)) if left >= s or s == 1)
    n = max(1, round(left / seconds))
    return f"{n} {unit}{'s' if n != 1 else ''} from now"


def main(args: argparse.Namespace) -> int:
    key = args.api_key
    if args.api_key_file:
        try:
            key = open(os.path.expanduser(args.api_key_file)).read().strip()
        except OSError as e:
            raise MlxEdgeError(f"--api-key-file {args.api_key_file}: {e.strerror}") from None
    url = base_url(args.host)
    models = fetch(url, key, args.timeout)
    if args.json:
        print(json.dumps({"models": models}))
        return 0
    table = [["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]]
    for m in models:
        size = m.get("size")
        table.append([str(m.get("name") or m.get("model") or "?"), str(m.get("digest") or "-")[:12],
                      human_size(size) if isinstance(size, int) else "-", str(m.get("backend") or "-"),
                      str(m.get("context_length") or "-"), until(m.get("expires_at"))])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0
