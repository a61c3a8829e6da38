"""Draws bench/results/results.json as one PNG (four panels).

Usage: python bench/chart.py results.json chart.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    rows = [t for t in data["targets"] if t["name"] != "direct"]
    names = [t["name"] for t in rows]
    colors = ["#d62728" if n.startswith("polyplex") else "#7f7f7f" for n in names]
    fig, ax = plt.subplots(2, 2, figsize=(13, 8))

    def by_round(key):
        """Each round's value of `key` (results.json gives them per target)."""
        return lambda t: [r[key] for r in t.get("rounds") or [] if r.get(key) is not None]

    def bars(a, key, title, log=False, fmt="{:.0f}", rounds=None):
        vals = [max(t.get(key) or 0, 0.01 if log else 0) for t in rows]
        b = a.bar(names, vals, color=colors)
        a.set_title(title)
        if log:
            a.set_yscale("log")
        for rect, v in zip(b, vals):
            a.annotate(fmt.format(v), (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                       ha="center", va="bottom", fontsize=8)
        # Each round's value as a dot on its bar: how far rounds differ.
        if rounds is not None:
            for rect, t in zip(b, rows):
                ys = [max(y, 0.01 if log else 0) for y in rounds(t)]
                if len(ys) > 1:
                    x = rect.get_x() + rect.get_width() / 2
                    a.scatter([x] * len(ys), ys, s=10, color="black", zorder=3)
        a.tick_params(axis="x", labelrotation=20, labelsize=8)

    bars(ax[0][0], "added_p50_us", "added latency p50, c=1 (µs, log; lower is better; dots: rounds)",
         log=True, rounds=by_round("added_c1_p50_us"))
    bars(ax[0][1], "rps_c64", "requests/s at c=64 (higher is better; dots: rounds)",
         rounds=by_round("rps_c64"))
    bars(ax[1][0], "cpu_us_per_req", "CPU µs per request (lower is better)", log=True)
    bars(ax[1][1], "rss_peak_c256_mib", "peak RSS at c=256, MiB (lower is better)", fmt="{:.1f}")
    m = data["method"]
    fig.suptitle(
        f"Gateway overhead vs a direct call — {m['rounds']} interleaved rounds, "
        f"{m['requests']} req/round at c=1{' (SMOKE RUN)' if m['smoke'] else ''}"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
