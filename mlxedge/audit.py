"""`mlxedge audit [--since 2h] [--json]`: store changes, loads and requests from the audit log."""

from __future__ import annotations

import argparse
import json

from .store import audit


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", default=None, help="only entries since e.g. 30m, 2h, 7d or an ISO time")
    p.add_argument("--json", action="store_true", help="the summary and the entries as one JSON object")


def main(args: argparse.Namespace) -> int:
    entries = audit.read(audit.parse_since(args.since) if args.since else None)
    summary = audit.summarize(entries)
    if args.json:
        print(json.dumps({**summary, "log": str(audit.log_path()), "events": entries}))
        return 0
    print(f"{summary['entries']} entries in {audit.log_path()}")
    for event, n in summary["by_event"].items():
        print(f"  {event:<10} {n}")
    for model, row in summary["by_model"].items():
        print(f"  {model}: " + ", ".join(f"{k} {v}" for k, v in row.items() if v))
    for key, row in summary["by_key"].items():
        print(f"  key {key}: " + ", ".join(f"{k} {v}" for k, v in row.items() if v))
    for f in summary["failures"]:
        print(f"  failed: {f.get('time')} {f.get('event')} {f.get('model')}: {f.get('error', f.get('outcome'))}")
    return 0
