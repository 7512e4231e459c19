"""Runs a command and measures its wall time and memory over its whole process tree.

    python measure.py --out m.json -- COMMAND [ARGS...]

A monitor thread samples every --interval seconds (default 0.2) the command and all its
descendants (Ray's gcs_server, raylet and worker processes for Flower; just the one process for
fedlora-sim) and records the peak of the SUM of their resident set sizes, plus the peak sum of
proportional set sizes (PSS: shared pages such as libtorch's split between the processes that map
them, so it does not count the same page twice). The kernel's exact peak RSS of the largest single
process (getrusage RUSAGE_CHILDREN) is recorded as well; for a one-process program that is the
exact peak, which the sampling can miss between samples.

Writes JSON: wall_s, exit_code, peak_rss_sum_mb, peak_pss_sum_mb, max_single_rss_mb,
peak_processes (processes alive at the RSS peak) and peak_breakdown_mb (RSS by process name then).
Exits with the command's exit code.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import psutil

MB = 1024 * 1024


class TreeSampler(threading.Thread):
    def __init__(self, root: psutil.Process, interval: float) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop_event = threading.Event()
        self.peak_rss, self.peak_pss = 0, 0
        self.peak_breakdown: Counter[str] = Counter()
        self.peak_processes = 0

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        rss, pss, count, breakdown = 0, 0, 0, Counter()
        for proc in procs:
            try:
                info = proc.memory_full_info()  # rss and pss (reads /proc/PID/smaps_rollup).
                name = proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            rss += info.rss
            pss += info.pss
            breakdown[name] += info.rss
            count += 1
        if rss > self.peak_rss:
            self.peak_rss, self.peak_processes, self.peak_breakdown = rss, count, breakdown
        self.peak_pss = max(self.peak_pss, pss)

    def run(self) -> None:
        while not self.stop_event.wait(self.interval):
            self.sample()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")

    start = time.perf_counter()
    child = subprocess.Popen(command)
    sampler = TreeSampler(psutil.Process(child.pid), args.interval)
    sampler.start()
    exit_code = child.wait()
    wall = time.perf_counter() - start
    sampler.stop_event.set()
    sampler.join()

    result = {
        "wall_s": wall,
        "exit_code": exit_code,
        "peak_rss_sum_mb": sampler.peak_rss / MB,
        "peak_pss_sum_mb": sampler.peak_pss / MB,
        "max_single_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "peak_processes": sampler.peak_processes,
        "peak_breakdown_mb": {name: rss / MB for name, rss in sampler.peak_breakdown.most_common()},
    }
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
