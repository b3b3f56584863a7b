"""Draw ``imgfetch bench``'s results: ``python -m imgfetch.bench.chart results.json chart.png``.

Top row: images/s of every tool in W1 (download only) and W2 (with resizing),
annotated with CPU seconds per 1000 images; W2 shows the processing ceiling as
a line.  Bottom row (with ``--scaling``): the async engine's images/s against
``-j`` next to the latency-bound ideal ``j / mean latency`` and its CPU cost,
and against the server's latency.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter

from imgfetch.bench.harness import CEILING

#: Mean of a log-normal with the server's default spread (sigma 0.5) relative to its median.
LOGNORMAL_MEAN = math.exp(0.5**2 / 2)
COLOURS = {"imgfetch": "#1f77b4", "ceiling": "#2ca02c", "peer": "#888888"}


def _colour(tool: str) -> str:
    if tool.startswith("imgfetch"):
        return COLOURS["imgfetch"]
    return COLOURS["ceiling"] if tool == CEILING else COLOURS["peer"]


def _bars(ax: Any, rows: list[dict[str, Any]], title: str) -> None:
    if not rows:  # e.g. a report of ``--workloads W2`` only
        ax.set_axis_off()
        ax.set_title(title)
        ax.text(0.5, 0.5, "not in this report", ha="center", va="center", transform=ax.transAxes)
        return
    tools = [r for r in rows if r["tool"] != CEILING]
    ceiling = next((r for r in rows if r["tool"] == CEILING), None)
    names = [r["tool"] for r in tools][::-1]
    values = [r["images_per_s"] for r in tools][::-1]
    ax.barh(names, values, color=[_colour(n) for n in names])
    top = max(values + ([ceiling["images_per_s"]] if ceiling else []), default=1.0)
    for y, r in enumerate(tools[::-1]):
        cpu = r["cpu_s_per_1000"]
        label = f" {r['images_per_s']:.0f}/s" + (f", {cpu:.2f} CPU s/1k" if cpu is not None else "")
        ax.text(r["images_per_s"], y, label, va="center", fontsize=8)
    if ceiling:
        ax.axvline(ceiling["images_per_s"], color=COLOURS["ceiling"], linestyle="--", linewidth=1.2)
        ax.text(
            ceiling["images_per_s"],
            -0.45,
            f" processing ceiling {ceiling['images_per_s']:.0f}/s",
            color=COLOURS["ceiling"],
            fontsize=8,
            va="bottom",
        )
    ax.set_xlim(0, top * 1.45)
    ax.set_xlabel("images per second (higher is better)")
    ax.set_title(title)


def _by_concurrency(ax: Any, rows: list[dict[str, Any]], one_loop: list[dict[str, Any]]) -> None:
    js = [r["concurrency"] for r in rows]
    rate = [r["images_per_s"] for r in rows]
    latency = rows[0]["latency_s"] * LOGNORMAL_MEAN
    ax.plot(js, rate, "o-", color=COLOURS["imgfetch"], label="imgfetch async (--loops auto)")
    if one_loop:
        # Below the first one-loop point auto already meant one loop: join the lines there.
        first = one_loop[0]["concurrency"]
        joined = [r for r in rows if r["concurrency"] < first][-1:] + one_loop
        ax.plot(
            [r["concurrency"] for r in joined],
            [r["images_per_s"] for r in joined],
            "o--",
            color=COLOURS["imgfetch"],
            alpha=0.5,
            label="imgfetch async, --loops 1",
        )
    ax.plot(js, [j / latency for j in js], ":", color="black", label="latency-bound ideal  j / mean latency")
    ax.set_xscale("log", base=2)
    ax.set_xticks(js, [str(j) for j in js])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, max(rate) * 1.6)
    ax.set_xlabel(f"-j (requests in flight), latency median {rows[0]['latency_s'] * 1000:g} ms")
    ax.set_ylabel("images per second")
    cpu_ax = ax.twinx()
    cpu_ax.plot(js, [r["cpu_s_per_1000"] for r in rows], "s--", color="#d62728", label="CPU s / 1000 images")
    cpu_ax.set_ylabel("CPU s / 1000 images", color="#d62728")
    cpu_ax.set_ylim(bottom=0)
    lines = ax.get_legend_handles_labels()
    more = cpu_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc="lower right")
    ax.set_title("Scaling with -j (W1)")


def _by_latency(ax: Any, rows: list[dict[str, Any]]) -> None:
    ms = [r["latency_s"] * 1000 for r in rows]
    rate = [r["images_per_s"] for r in rows]
    ax.plot(ms, rate, "o-", color=COLOURS["imgfetch"], label=f"imgfetch async, -j {rows[0]['concurrency']}")
    ideal = [rows[0]["concurrency"] / (r["latency_s"] * LOGNORMAL_MEAN) for r in rows]
    ax.plot(ms, ideal, ":", color="black", label="latency-bound ideal")
    ax.set_xscale("log")
    ax.set_xticks(ms, [f"{m:g}" for m in ms])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, max(rate) * 1.6)
    ax.set_xlabel("server latency, median ms")
    ax.set_ylabel("images per second")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title("Scaling with latency (W1)")


def draw(report: dict[str, Any], out: Path) -> None:
    results = report["results"]
    scaling = report.get("scaling") or {}
    has_scaling = bool(scaling.get("concurrency") or scaling.get("latency"))
    fig, axes = plt.subplots(
        2 if has_scaling else 1, 2, figsize=(14, 9 if has_scaling else 4.8), squeeze=False
    )
    size = report["settings"]["size"]
    _bars(axes[0][0], [r for r in results if r["workload"] == "W1"], "W1: download only")
    _bars(axes[0][1], [r for r in results if r["workload"] == "W2"], f"W2: download + --size {size}")
    if has_scaling:
        if scaling.get("concurrency"):
            _by_concurrency(axes[1][0], scaling["concurrency"], scaling.get("concurrency-one-loop") or [])
        if scaling.get("latency"):
            _by_latency(axes[1][1], scaling["latency"])
    m = report["machine"]
    settings = report["settings"]
    fig.suptitle(
        f"imgfetch bench: {settings['urls']} URLs, {settings['hosts']} hosts, latency median"
        f" {settings['latency'] * 1000:g} ms — {m['cores']} cores, {m['cpu']}, Python {m['python']}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    draw(json.loads(Path(args[0]).read_text()), Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
