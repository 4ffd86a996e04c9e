"""`mlxedge list [--json]`: the models in the store."""

from __future__ import annotations

import argparse
import json

from . import store


def human_size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.0f} KB"


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON list")


def main(args: argparse.Namespace) -> int:
    rows = store.list_models()
    if args.json:
        print(json.dumps(rows))
        return 0
    table = [["NAME", "ID", "SIZE", "QUANTIZATION", "BITS/WEIGHT", "MODIFIED"]]
    for r in rows:
        bpw = f"{r['bits_per_weight']:.2f}" if r["bits_per_weight"] is not None else "-"
        table.append([r["name"], r["id"], human_size(r["size"]), str(r["quantization"]), bpw,
                      (r["modified"] or "")[:19].replace("T", " ")])
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0
