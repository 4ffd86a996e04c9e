"""`mlxedge list [--json] [--cache]`: the models in the store (--cache: the `.gguf` conversions it caches)."""

from __future__ import annotations

import argparse
import json

from . import store


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list")
    p.add_argument("--cache", action="store_true",
                   help="list the conversions of .gguf files loaded by path (unnamed; `mlxedge rm --cache` drops them)")


def main(args: argparse.Namespace) -> int:
    rows = store.cache.entries() if args.cache else store.list_models()
    if args.json:
        print(json.dumps(rows))
        return 0
    if args.cache:
        table = [["SOURCE", "ID", "SIZE", "RECIPE", "MLXEDGE", "MODIFIED"]]
        table += [[r["source"], r["id"], human_size(r["size"]), str(r["recipe"]), str(r["mlxedge_version"]),
                   (r["modified"] or "")[:19].replace("T", " ")] for r in rows]
    else:
        table = [["NAME", "ID", "SIZE", "QUANTIZATION", "BITS/WEIGHT", "MODIFIED"]]
    for r in rows if not args.cache else []:
        bpw = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] is not None else "-"
        table.append([r["name"], r["id"], human_size(r["size"]), str(r["quantization"]), bpw,
                      (r["modified"] or "")[:19].replace("T", " ")])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0
