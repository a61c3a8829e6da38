#!/usr/bin/env python3
"""Where a stream's time to first token goes, stage by stage.

Lines up the client's stamps (`polyplex-bench load --streams N --trace`,
stderr) with polyplex's own (a build with `--features phases`, stderr) and
the upstream's send stamp in the first chunk, stream by stream, and prints
each stage's p50, p90 and minimum in µs. All stamps are wall-clock
nanoseconds, which every process on the machine reads from the same clock.

    python3 bench/phases.py client.err polyplex.err

See docs/performance.md, "Seventh session: the stages of a stream start".
"""

import sys


def parse(path, tag):
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith(tag + " "):
                continue
            stamps = []
            seen = set()
            for kv in line.split()[1:]:
                name, _, ns = kv.partition("=")
                if name not in seen:  # the first of a repeated stage
                    seen.add(name)
                    stamps.append((name, int(ns)))
            rows.append(stamps)
    return rows


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    client = parse(sys.argv[1], "CLIENT")
    gateway = parse(sys.argv[2], "PHASES")
    n = min(len(client), len(gateway))
    if n == 0:
        sys.exit("no CLIENT or PHASES lines to line up")
    streams = []
    for c, g in zip(client[-n:], gateway[-n:]):
        c = dict(c)
        seq = [("client sent", c["sent"])]
        for name, ns in g:
            if name == "hdrs":
                seq.append(("upstream stamp", c["stamp"]))
            seq.append((name, ns))
        seq.append(("client first", c["first"]))
        streams.append(seq)
    shape = [name for name, _ in streams[0]]
    same = [s for s in streams if [name for name, _ in s] == shape]
    print(f"{len(same)} streams; µs from the stage before")
    print(f"{'stage':>16} {'p50':>8} {'p90':>8} {'min':>8}")
    for i in range(1, len(shape)):
        d = sorted((s[i][1] - s[i - 1][1]) / 1000 for s in same)
        print(f"{shape[i]:>16} {d[len(d) // 2]:8.1f} {d[int(len(d) * 0.9)]:8.1f} {d[0]:8.1f}")
    total = sorted((s[-1][1] - s[0][1]) / 1000 for s in same)
    print(f"{'TTFT':>16} {total[len(total) // 2]:8.1f} {total[int(len(total) * 0.9)]:8.1f} {total[0]:8.1f}")


if __name__ == "__main__":
    main()
