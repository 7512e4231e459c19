#!/usr/bin/env python3
"""Builds the strategy comparison table from fedlora-sim runs and splices it into a document.

Reads <runs>/<strategy>/metrics.jsonl for each strategy given, and replaces the text between
'<!-- compare:begin -->' and '<!-- compare:end -->' in --doc (prints the table without --doc).
Per-client-per-round numbers average rounds 1..R: uploads over reporting clients, downloads over
selected clients.
"""
import argparse
import json
import os
import platform
import sys
import time


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def human(n):
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--doc")
    ap.add_argument("strategies", nargs="+")
    args = ap.parse_args()

    lines = [
        "| strategy | rounds | eval loss, round 0 | final eval loss | vs fedavg | params up | params down | bytes up | bytes down | s / round |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    finals = {}
    table = []
    for s in args.strategies:
        path = os.path.join(args.runs, s, "metrics.jsonl")
        if not os.path.exists(path):
            print(f"missing {path}", file=sys.stderr)
            continue
        rows = load(path)
        rounds = [r for r in rows if r["round"] > 0]
        if not rounds:
            continue
        base = rows[0].get("eval_loss")
        final = rounds[-1].get("eval_loss")
        finals[s] = final

        def per_client(key, denom):
            vals = [r[key] / max(1, r[denom]) for r in rounds if r.get(denom)]
            return sum(vals) / len(vals) if vals else 0

        def down(r):  # Adapter scalars in tasks plus corrections, wherever they travelled.
            return r["params_down"] + r.get("correction_params_down", 0)

        downs = [down(r) / max(1, r["clients_selected"]) for r in rounds]
        table.append((s, len(rounds), base, final,
                      per_client("params_up", "clients_reported"),
                      sum(downs) / len(downs),
                      per_client("bytes_up", "clients_reported"),
                      sum((r["bytes_down"] + r.get("correction_bytes_down", 0))
                          / max(1, r["clients_selected"]) for r in rounds) / len(rounds),
                      sum(r["seconds"] for r in rounds) / len(rounds)))
    ref = finals.get("fedavg")
    for s, n, base, final, pu, pd, bu, bd, sec in table:
        delta = "" if ref is None or final is None else f"{final - ref:+.4f}"
        lines.append(f"| {s} | {n} | {base:.4f} | {final:.4f} | {delta} | {human(pu)} | "
                     f"{human(pd)} | {human(bu)} | {human(bd)} | {sec:.1f} |")
    lines.append("")
    lines.append(f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} "
                 f"({os.cpu_count()} cores) with scripts/compare-strategies.sh; eval loss in "
                 "nats/token on the clients' held-out speaker turns; params and bytes per client "
                 "per round; downloads include base corrections, which fedex and flora ship with the "
                 "evaluation task when evaluation is on).")
    text = "\n".join(lines)
    if not args.doc:
        print(text)
        return
    with open(args.doc) as f:
        doc = f.read()
    begin, end = "<!-- compare:begin -->", "<!-- compare:end -->"
    i, j = doc.find(begin), doc.find(end)
    if i < 0 or j < 0:
        sys.exit(f"{args.doc}: markers {begin} / {end} not found")
    doc = doc[: i + len(begin)] + "\n" + text + "\n" + doc[j:]
    with open(args.doc, "w") as f:
        f.write(doc)


if __name__ == "__main__":
    main()
