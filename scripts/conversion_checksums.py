"""Checksums of every file `mlxedge convert` writes, for refactors that must not change output.

    python scripts/conversion_checksums.py record before.json     # on the old code
    python scripts/conversion_checksums.py check before.json      # on the new code: exit 1 on a diff

Sources: the two real GGUFs (when installed), every tiny GGUF fixture, the ONNX fixtures, the HF
checkpoint fixture and the Swift tiny bundles (bundle sources); recipes keep, q4, mixed_3_6 and
bpw3.5 (calibration with its defaults).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ("keep", "q4", "mixed_3_6", "bpw3.5")


def sources(real: bool) -> dict[str, Path]:
    out: dict[str, Path] = {}
    if real:
        from mlxedge import assets

        for name, fn in (("smollm2", assets.smollm2_gguf), ("gemma3", assets.gemma3_gguf)):
            try:
                out[name] = Path(fn())
            except Exception as e:  # noqa: BLE001 - a missing package only skips that model
                print(f"skip {name}: {e}", file=sys.stderr)
    for p in sorted((ROOT / "tests/fixtures/gguf").glob("*.gguf")):
        out[f"gguf/{p.stem}"] = p
    onnx = ROOT / "tests/fixtures/onnx/tiny-llama"
    for p in sorted(d for d in onnx.iterdir() if d.is_dir()):
        out[f"onnx/{p.name}"] = p  # "hf" is the safetensors checkpoint
    tiny = ROOT / "tests/goldens/tiny"
    for p in sorted(d for d in tiny.iterdir() if d.is_dir()):
        out[f"bundle/{p.name}"] = p
    return out


def digest(directory: Path, source: Path) -> dict[str, str]:
    """sha256 per file; in mlxedge.json the source's absolute path is replaced by its name, so that
    fixtures may move between the runs (every other byte is compared as written)."""
    out = {}
    for p in sorted(directory.iterdir()):
        data = p.read_bytes()
        if p.name == "mlxedge.json":
            data = data.replace(json.dumps(str(source.resolve()))[1:-1].encode(), source.name.encode())
        out[p.name] = hashlib.sha256(data).hexdigest()
    return out


def run(real: bool, only: str | None) -> dict:
    from mlxedge.convert import convert
    from mlxedge.errors import MlxEdgeError

    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in sources(real).items():
            if only and only not in name:
                continue
            for recipe in RECIPES:
                key = f"{name}:{recipe}"
                t0 = time.time()
                out = Path(tmp) / key.replace("/", "_").replace(":", "_")
                try:
                    convert(path, out, quant=recipe, show_progress=False)
                    result[key] = digest(out, path)
                except MlxEdgeError as e:
                    result[key] = {"error": str(e)}
                print(f"{key}: {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("record", "check"))
    ap.add_argument("file")
    ap.add_argument("--no-real", action="store_true", help="tiny fixtures only")
    ap.add_argument("--only", help="sources whose name contains this")
    args = ap.parse_args()
    got = run(not args.no_real, args.only)
    if args.mode == "record":
        Path(args.file).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        print(f"recorded {len(got)} conversions", file=sys.stderr)
        return 0
    want = json.loads(Path(args.file).read_text())
    bad = [k for k in got if want.get(k) != got[k]]
    missing = [k for k in want if k not in got and (not args.only or args.only in k)]
    for k in bad:
        files = sorted(set(want.get(k, {})) | set(got[k]))
        diff = [f for f in files if (want.get(k) or {}).get(f) != got[k].get(f)]
        print(f"DIFF {k}: {', '.join(diff)}")
    for k in missing:
        print(f"MISSING {k}")
    print(f"{len(got) - len(bad)}/{len(got)} identical")
    return 1 if bad or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
