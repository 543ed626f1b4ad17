"""Glass to glass in a real browser, both streamers, one run: the table and the plot.

Runs, each in its own private network namespace (root):
- `bench.glass_to_glass --source xvfb --viewer aiortc`: the agent's GStreamer pipeline (the
  spec's Selkies-GStreamer 1.x path, x264 here) capturing an Xvfb screen, aiortc as the viewer;
- the same with headless Chromium as the viewer (harness/browser_viewer.py);
- `bench.selkies_session --latency`: real Selkies 2.x supervised by `vdi-agent run`, its own
  page in Chromium;
each at 720p and 1080p, through the TURN relay and directly, `--repeat` connections per row
(each connection has its own capture and display phase; their pictures are pooled).

    python -m bench.browser_glass [--seconds 8] [--repeat 3] [--json out.json]
        [--plot docs/browser-latency.png]
    python -m bench.browser_glass --from out.json --plot docs/browser-latency.png
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TARGET_MS = 50  # the spec's glass-to-glass target


def bench(module: str, *args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", module, *args, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{module} failed:\n{result.stderr[-4000:]}\n{result.stdout[-2000:]}")
    report: dict[str, Any] = json.loads(result.stdout.splitlines()[-1])
    return report


def measure(args: argparse.Namespace) -> dict[str, Any]:
    common = [
        *("--resolutions", *args.resolutions),
        *("--seconds", str(args.seconds)),
        *("--repeat", str(args.repeat)),
    ]
    rows: list[dict[str, Any]] = []
    for viewer in ("chromium", "aiortc"):
        report = bench(
            "bench.glass_to_glass",
            *("--source", "xvfb", "--viewer", viewer, "--no-credential-checks"),
            *common,
        )
        for run in report["runs"]:
            rows.append({**run, "streamer": "agent pipeline (GStreamer, x264)", "viewer": viewer})
    report = bench("bench.selkies_session", "--latency", *common)
    for run in report["runs"]:
        rows.append({**run, "streamer": f"{report['session']} (x264)", "viewer": "chromium"})
    return {"rows": rows, "seconds": args.seconds, "repeat": args.repeat}


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def print_table(result: dict[str, Any]) -> None:
    print(
        "| streamer | viewer | stream | path | fps | p50 ms | p95 ms | p99 ms "
        "| to compositor p50 | last packet p50 | jitter ms | jitter buffer ms | decode ms "
        "| ICE pair | p50 vs direct |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    rows = result["rows"]
    direct = {
        (r["streamer"], r["viewer"], r["target"]): r["p50_ms"]
        for r in rows
        if r["mode"] == "direct"
    }
    for row in rows:
        floor = direct.get((row["streamer"], row["viewer"], row["target"]))
        ratio = f"{row['p50_ms'] / floor:.2f}x" if floor and row["p50_ms"] else "-"
        pair = f"{row.get('local_candidate')}/{row.get('remote_candidate')}"
        print(
            f"| {row['streamer']} | {row['viewer']} | {row['target']} | {row['mode']} "
            f"| {row['fps']} | {row['p50_ms']} | {row['p95_ms']} | {row['p99_ms']} "
            f"| {_cell(row.get('presented_p50_ms'))} | {_cell(row.get('received_p50_ms'))} "
            f"| {_cell(row.get('jitter_ms'))} | {_cell(row.get('jitter_buffer_ms'))} "
            f"| {_cell(row.get('decode_ms'))} | {pair} | {ratio} |"
        )
    for row in rows:
        if row["viewer"] == "chromium":
            print(
                f"{row['streamer']} {row['target']} {row['mode']}: p50 per connection "
                f"{row.get('p50_per_connection')}, frames {row['frames_measured']}, dropped "
                f"{row.get('frames_dropped')}, lost {row.get('packets_lost')}, clock round "
                f"trip {row.get('clock', {}).get('rtt_ms')} ms, drift "
                f"{row.get('clock', {}).get('drift_ms')} ms"
            )


def plot(result: dict[str, Any], path: Path) -> None:
    """One box per row (whiskers at p1 and p99) of every picture's capture -> shown latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r.get("latencies_ms")]
    labels = [
        f"{r['streamer'].split(' (')[0]}, {r['viewer']}\n{r['target']} {r['mode']}" for r in rows
    ]
    figure, axes = plt.subplots(figsize=(10, 0.55 * len(rows) + 1.6))
    boxes = axes.boxplot(
        [r["latencies_ms"] for r in rows],
        orientation="horizontal",
        whis=(1, 99),
        showfliers=False,
        patch_artist=True,
        tick_labels=labels,
    )
    colours = {"chromium": "#4c72b0", "aiortc": "#c0c0c0"}
    for patch, row in zip(boxes["boxes"], rows, strict=True):
        patch.set_facecolor(colours[row["viewer"]])
    axes.axvline(TARGET_MS, color="#c44e52", linestyle="--", linewidth=1)
    axes.text(TARGET_MS, len(rows) + 0.6, " target 50 ms", color="#c44e52", va="center")
    axes.invert_yaxis()
    axes.set_xlabel("capture -> shown, ms (box: p25-p75, line: median, whiskers: p1-p99)")
    axes.set_title(
        "Glass to glass from the screen, one machine (2 cores, no GPU): "
        f"{result['repeat']} connections x {result['seconds']:g} s per row"
    )
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", nargs="+", default=["1280x720", "1920x1080"])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured per connection")
    parser.add_argument("--repeat", type=int, default=3, help="connections per row")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--from", dest="source", type=Path, help="read figures, do not measure")
    parser.add_argument("--plot", type=Path, help="write the latency distribution plot (PNG)")
    args = parser.parse_args(argv)
    result = json.loads(args.source.read_text()) if args.source else measure(args)
    if args.json:
        args.json.write_text(json.dumps(result))
    print_table(result)
    if args.plot:
        plot(result, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
