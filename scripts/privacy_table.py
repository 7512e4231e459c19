#!/usr/bin/env python3
"""Builds the differential-privacy utility table from fedlora-sim runs and splices it into a doc.

Reads <runs>/<dataset>/<strategy>-<epsilon>/metrics.jsonl and replaces the text between
'<!-- privacy-utility:begin -->' and '<!-- privacy-utility:end -->' in --doc (prints the table
without --doc). Per run: the last round's eval loss (as perplexity) or eval accuracy next to the
majority baseline, the epsilon actually spent and the noise multiplier, and the last clip.
"""
import argparse
import json
import math
import os
import platform
import sys
import time

BEGIN, END = "<!-- privacy-utility:begin -->", "<!-- privacy-utility:end -->"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def cell(rows, dataset):
    last = rows[-1]
    if dataset == "spam":
        acc, base = last.get("eval_accuracy"), last.get("eval_majority_accuracy")
        if acc is None:
            return "–"
        return f"{acc:.3f} (majority {base:.3f})" if base is not None else f"{acc:.3f}"
    loss = last.get("eval_loss")
    return "–" if loss is None else f"{math.exp(loss):.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--doc")
    ap.add_argument("--datasets", required=True)
    ap.add_argument("--strategies", required=True)
    ap.add_argument("--epsilons", required=True)
    args = ap.parse_args()
    datasets, strategies, epsilons = (args.datasets.split(), args.strategies.split(),
                                      args.epsilons.split())
    lines = []
    for d in datasets:
        what = ("eval accuracy of the last round (majority baseline)" if d == "spam"
                else "eval perplexity of the last round")
        lines.append(f"**{d}** — {what}; in brackets per cell: rounds released, ε spent, σ, "
                     "last clip.\n")
        lines.append("| strategy | " + " | ".join(f"ε = {e}" if e != "inf" else "no DP"
                                                  for e in epsilons) + " |")
        lines.append("|---|" + "---|" * len(epsilons))
        base_ppl = None
        for s in strategies:
            cells = []
            for e in epsilons:
                path = os.path.join(args.runs, d, f"{s}-{e}", "metrics.jsonl")
                if not os.path.exists(path):
                    cells.append("not run")
                    continue
                rows = load(path)
                if base_ppl is None and rows and rows[0].get("eval_loss") is not None:
                    base_ppl = math.exp(rows[0]["eval_loss"])
                text = cell(rows, d)
                p = rows[-1].get("privacy")
                if p:
                    text += (f" [{len(rows) - 1} rounds, ε {p['epsilon']:.2f}, "
                             f"σ {p['noise_multiplier']:.2f}, C {p['clip_next']:.3g}]")
                cells.append(text)
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        if d != "spam" and base_ppl is not None:
            lines.append(f"\nThe base model (round 0): perplexity {base_ppl:.1f}.")
        lines.append("")
    lines.append(f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, "
                 f"{os.cpu_count()} cores, by scripts/privacy-utility.sh.")
    table = "\n".join(lines)
    if not args.doc:
        print(table)
        return 0
    with open(args.doc) as f:
        doc = f.read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{args.doc}: no {BEGIN} ... {END} markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    with open(args.doc, "w") as f:
        f.write(head + BEGIN + "\n" + table + "\n" + END + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
