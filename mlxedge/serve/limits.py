"""What every request passes first: the API key and its role, the body size, JSON and field types.

Errors are `ApiError(status, message, field)`; app.py writes them in the route's dialect (OpenAI's
`{"error": {...}}` or Ollama's `{"error": "..."}`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import ClientDisconnect, Request

from ..errors import MlxEdgeError

ROLES = ("user", "admin")


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def key_id(key: str) -> str:
    """What the audit log and /api/ps show for a key: a short hash, never the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass
class Keys:
    """API keys and their roles; empty: no authentication (loopback use)."""

    roles: dict[str, str]

    @property
    def required(self) -> bool:
        return bool(self.roles)

    def check(self, header: str | None) -> tuple[str | None, str]:
        """(key id, role) for an Authorization header; ApiError 401 when it does not match."""
        if not self.roles:
            return None, "admin"
        token = header[7:].strip() if header and header[:7].lower() == "bearer " else None
        if token:
            for key, role in self.roles.items():
                if hmac.compare_digest(key.encode(), token.encode()):
                    return key_id(key), role
        raise ApiError(401, "missing or wrong API key: send `Authorization: Bearer KEY`",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


def read_keys(api_key: str | None = None, api_key_file: str | None = None, keys_file: str | None = None) -> Keys:
    """--api-key / --api-key-file (one key, role admin) and --keys-file (`KEY ROLE` per line)."""
    roles: dict[str, str] = {}
    if api_key:
        roles[api_key] = "admin"
    if api_key_file:
        key = _read(api_key_file).strip()
        if not key or any(c.isspace() for c in key):
            raise MlxEdgeError(f"--api-key-file {api_key_file}: expected one key on one line")
        roles[key] = "admin"
    if keys_file:
        for n, line in enumerate(_read(keys_file).splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ROLES:
                raise MlxEdgeError(f"--keys-file {keys_file} line {n}: expected `KEY ROLE` with ROLE user or admin")
            roles[parts[0]] = parts[1]
    return Keys(roles)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MlxEdgeError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None


async def read_json(request: Request, max_bytes: int) -> dict:
    """The request body as a JSON object: 413 over `max_bytes`, 400 for malformed JSON or a non-object."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {declared} bytes is over the limit of {max_bytes} bytes")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes} bytes")
    except ClientDisconnect:
        raise ApiError(400, "the client went away while sending the body") from None
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"malformed JSON body: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the JSON body must be an object, got {type(data).__name__}")
    return data


_TYPES = {"str": str, "int": int, "number": (int, float), "bool": bool, "list": list, "dict": dict}
_NAMES = {"str": "a string", "int": "an integer", "number": "a number", "bool": "true or false",
          "list": "an array", "dict": "an object"}


def model_name(data: dict) -> str:
    """Ollama's `model` (or its older `name`) field, required."""
    name = get(data, "model", "str") or get(data, "name", "str")
    if not name:
        raise ApiError(400, "'model' is required", param="model")
    return name


def get(data: dict, name: str, kind: str | tuple[str, ...], default: Any = None, *, lo: float | None = None,
        hi: float | None = None, where: str = "") -> Any:
    """data[name] checked to be of `kind` (null counts as missing), within [lo, hi]: else 400 naming it."""
    value = data.get(name)
    if value is None:
        return default
    kinds = (kind,) if isinstance(kind, str) else kind
    field_name = f"{where}{name}"
    ok = any(isinstance(value, _TYPES[k]) and not (k in ("int", "number") and isinstance(value, bool))
             for k in kinds)
    if not ok:
        raise ApiError(400, f"'{field_name}' must be {' or '.join(_NAMES[k] for k in kinds)}, "
                            f"got {json.dumps(value)[:60]}", param=field_name)
    if isinstance(value, float) and not math.isfinite(value):
        raise ApiError(400, f"'{field_name}' must be a finite number", param=field_name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo or hi is not None and value > hi:
            bounds = f"in [{lo}, {hi}]" if lo is not None and hi is not None else (
                f">= {lo}" if lo is not None else f"<= {hi}")
            raise ApiError(400, f"'{field_name}' must be {bounds}, got {value}", param=field_name)
    return value


def stop_list(value: Any, field_name: str = "stop") -> tuple[str, ...]:
    """`stop`: a string or a list of strings."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise ApiError(400, f"'{field_name}' must be a string or an array of strings", param=field_name)
