"""The Modelfile subset mlxedge reads: FROM, PARAMETER, SYSTEM, TEMPLATE (Ollama's syntax).

    FROM smollm2:135m-instruct-q4_1        # a store name, or a path relative to the Modelfile
    PARAMETER temperature 0.7
    PARAMETER stop "<|im_end|>"            # repeatable
    SYSTEM \"\"\"You are terse.\"\"\"           # triple quotes span lines
    TEMPLATE \"\"\"{% for m in messages %}...\"\"\"  # a Jinja chat template (replaces the model's)

Anything else is an error naming the line. PARAMETERs map onto generation options (OPTIONS).
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2

from ..errors import MlxEdgeError

# Modelfile PARAMETER -> (type, check, what the check says, generation option it sets)
_FLOAT, _INT, _STR = float, int, str
PARAMETERS = {
    "temperature": (_FLOAT, lambda v: v >= 0, ">= 0", "temp"),
    "top_k": (_INT, lambda v: v >= 0, ">= 0", "top_k"),
    "top_p": (_FLOAT, lambda v: 0 < v <= 1, "in (0, 1]", "top_p"),
    "min_p": (_FLOAT, lambda v: 0 <= v <= 1, "in [0, 1]", "min_p"),
    "repeat_penalty": (_FLOAT, lambda v: v > 0, "> 0", "repetition_penalty"),
    "seed": (_INT, lambda v: v >= 0, ">= 0", "seed"),
    "num_ctx": (_INT, lambda v: v >= 1, ">= 1", None),
    "num_predict": (_INT, lambda v: v >= 1, ">= 1", "max_tokens"),
    "stop": (_STR, lambda v: v != "", "not empty", "stop"),
}
DIRECTIVES = ("FROM", "PARAMETER", "SYSTEM", "TEMPLATE")


def _unquote(value: str, lines: list[str], i: int) -> tuple[str, int]:
    """The value starting on line i (0-based): triple-quoted (may span lines), quoted, or bare."""
    if value.startswith('"""'):
        rest = value[3:]
        if '"""' in rest:
            return rest[: rest.index('"""')], i
        parts = [rest]
        for j in range(i + 1, len(lines)):
            if '"""' in lines[j]:
                parts.append(lines[j][: lines[j].index('"""')])
                return "\n".join(parts), j
            parts.append(lines[j])
        raise MlxEdgeError(f'Modelfile line {i + 1}: """ is never closed')
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value), i
        except ValueError:
            return value[1:-1], i
    return value, i


def parse(text: str, base: Path | None = None) -> dict:
    """{"from", "parameters", "system", "template"} from Modelfile text; FROM paths made absolute
    against `base` (the Modelfile's directory)."""
    lines = text.splitlines()
    out: dict = {"from": None, "parameters": {}, "system": None, "template": None}
    i = 0
    while i < len(lines):
        line, n = lines[i].strip(), i + 1
        if not line or line.startswith("#"):
            i += 1
            continue
        word, _, rest = line.partition(" ")
        directive, rest = word.upper(), rest.strip()
        if directive not in DIRECTIVES:
            raise MlxEdgeError(f"Modelfile line {n}: unknown directive {word!r} "
                               f"(mlxedge reads {', '.join(DIRECTIVES)})")
        if not rest:
            raise MlxEdgeError(f"Modelfile line {n}: {directive} needs a value")
        if directive == "PARAMETER":
            key, _, value = rest.partition(" ")
            value, i = _unquote(value.strip(), lines, i)
            _set_parameter(out["parameters"], key.lower(), value, n)
        else:
            value, i = _unquote(rest, lines, i)
            if directive == "FROM":
                out["from"] = _from(value.strip(), base)
            elif directive == "TEMPLATE":
                try:
                    jinja2.Environment().parse(value)
                except jinja2.TemplateSyntaxError as e:
                    raise MlxEdgeError(f"Modelfile line {n}: TEMPLATE is not valid Jinja: {e.message}") from None
                out["template"] = value
            else:
                out["system"] = value
        i += 1
    if out["from"] is None:
        raise MlxEdgeError("Modelfile: no FROM line (FROM a model name or a path)")
    return out


def _from(value: str, base: Path | None) -> str:
    looks_like_path = value.startswith((".", "/", "~")) or value.endswith((".gguf", ".onnx"))
    if looks_like_path and base is not None and not Path(value).expanduser().is_absolute():
        return str((base / value).resolve())
    return str(Path(value).expanduser()) if value.startswith("~") else value


def _set_parameter(params: dict, key: str, value: str, n: int) -> None:
    if key not in PARAMETERS:
        raise MlxEdgeError(f"Modelfile line {n}: unknown PARAMETER {key!r} (known: {', '.join(PARAMETERS)})")
    kind, ok, rule, _ = PARAMETERS[key]
    try:
        v = kind(value)
    except ValueError:
        raise MlxEdgeError(f"Modelfile line {n}: PARAMETER {key} {value!r} is not a{'n integer' if kind is int else ' number'}") from None
    if kind is float and v != v:
        raise MlxEdgeError(f"Modelfile line {n}: PARAMETER {key} is NaN")
    if not ok(v):
        raise MlxEdgeError(f"Modelfile line {n}: PARAMETER {key} {value} must be {rule}")
    if key == "stop":
        params.setdefault("stop", []).append(v)
    else:
        params[key] = v


def options(parameters: dict) -> dict:
    """Generation options (api.Model keyword names) for Modelfile parameters."""
    return {PARAMETERS[k][3]: v for k, v in parameters.items() if k in PARAMETERS and PARAMETERS[k][3]}


def render(from_: str, parameters: dict, system: str | None, template: str | None) -> str:
    """Modelfile text that `parse` reads back to the same values."""
    lines = [f"FROM {from_}"]
    for key, value in parameters.items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
    for key, value in (("SYSTEM", system), ("TEMPLATE", template)):
        if value is not None:
            lines.append(f'{key} """{value}"""')
    return "\n".join(lines) + "\n"
