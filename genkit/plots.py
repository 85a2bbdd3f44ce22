"""PNG plots of `genkit bench` and `genkit profile` results.

matplotlib is an optional dependency (the ``plots`` extra), so it is imported only
when a plot is drawn, with the non-interactive Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from genkit.errors import GenkitError

INSTALL_HINT = "pip install 'genkit[plots]'"
LINE_STYLES = {"genkit": "-", "transformers": "--"}


class PlotDependencyError(GenkitError, ImportError):
    """matplotlib is not installed, so no plot can be drawn."""


def require_matplotlib():
    """Import matplotlib.pyplot with the Agg backend, or raise PlotDependencyError naming the install command."""
    try:
        import matplotlib
    except ImportError as exc:
        raise PlotDependencyError(
            f"plots need matplotlib, which is not installed; run `{INSTALL_HINT}` or pass --no-plots"
        ) from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs(report: dict[str, Any], implementation: str) -> list[dict[str, Any]]:
    return [run for run in report["runs"] if run["implementation"] == implementation]


def _implementations(report: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(run["implementation"] for run in report["runs"]))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


# Space above the tallest bar, as a fraction of its height, so that no bar touches the top.
HEADROOM = 0.15


def draw_latency_breakdown(ax, report: dict[str, Any]) -> float:
    """Draw the stacked latency bars on ``ax``, with the legend outside on the right; return the tallest bar in ms."""
    implementations = _implementations(report)
    cells = [(run["prompt_length"], run["gen_length"]) for run in _runs(report, implementations[0])]
    width = 0.8 / len(implementations)
    tallest = 0.0
    for offset, implementation in enumerate(implementations):
        by_cell = {(run["prompt_length"], run["gen_length"]): run for run in _runs(report, implementation)}
        xs = [i + (offset - (len(implementations) - 1) / 2) * width for i in range(len(cells))]
        ttft = [by_cell[cell]["ttft_s"] * 1000 for cell in cells]
        decode = [by_cell[cell]["decode_s"] * 1000 for cell in cells]
        other = [by_cell[cell]["other_s"] * 1000 for cell in cells]
        below = [a + b for a, b in zip(ttft, decode)]
        tallest = max([tallest] + [a + b for a, b in zip(below, other)])
        hatch = None if offset == 0 else "//"
        ax.bar(xs, ttft, width, label=f"{implementation}: prefill (TTFT)", color="tab:orange", hatch=hatch)
        ax.bar(xs, decode, width, bottom=ttft, label=f"{implementation}: decode", color="tab:blue", hatch=hatch)
        ax.bar(xs, other, width, bottom=below, label=f"{implementation}: between steps and results",
               color="tab:gray", hatch=hatch)
    ax.set_xticks(range(len(cells)), [f"{p}+{g}" for p, g in cells], rotation=45, ha="right")
    ax.set_ylim(0, tallest * (1 + HEADROOM) if tallest > 0 else 1.0)
    ax.set_xlabel("prompt tokens + generated tokens")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Latency per request: prefill and decode")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    return tallest


def plot_latency_breakdown(report: dict[str, Any], path: Path) -> Path:
    """Draw one stacked bar per cell and implementation: time to first token, decode steps, the rest."""
    plt = require_matplotlib()
    cells = len({(run["prompt_length"], run["gen_length"]) for run in report["runs"]})
    bars = len(report["runs"])
    # The legend sits right of the axes, so the figure is wider than the bars need.
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * max(bars, cells)) + 3.0, 4.5))
    draw_latency_breakdown(ax, report)
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def _lines(ax, report: dict[str, Any], x_key: str, group_key: str, y_of, label_unit: str) -> None:
    for implementation in _implementations(report):
        runs = _runs(report, implementation)
        for group in sorted({run[group_key] for run in runs}):
            points = sorted((run[x_key], y_of(run)) for run in runs if run[group_key] == group)
            ax.plot(
                [x for x, _ in points],
                [y for _, y in points],
                LINE_STYLES.get(implementation, ":"),
                marker="o",
                label=f"{implementation}, {group} {label_unit}",
            )


def plot_throughput(report: dict[str, Any], path: Path) -> Path:
    """Draw prefill and decode tokens/s against prompt length, one line per generation length."""
    plt = require_matplotlib()
    fig, (prefill_ax, decode_ax) = plt.subplots(1, 2, figsize=(11, 4.5))
    _lines(prefill_ax, report, "prompt_length", "gen_length", lambda run: run["prefill_tokens_per_s"], "new tokens")
    _lines(decode_ax, report, "prompt_length", "gen_length", lambda run: run["decode_tokens_per_s"], "new tokens")
    for ax, title in ((prefill_ax, "Prefill throughput"), (decode_ax, "Decode throughput")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("tokens/s")
        ax.set_title(title)
        ax.legend(fontsize="x-small")
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def plot_decode_fraction(report: dict[str, Any], path: Path) -> Path:
    """Draw the fraction of request time spent in decode against generation length, one line per prompt length."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _lines(ax, report, "gen_length", "prompt_length", lambda run: run["decode_fraction"], "prompt tokens")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("decode time / total time")
    ax.set_title("Fraction of time spent in decode")
    ax.legend(fontsize="x-small")
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def plot_latency_vs_gen_length(report: dict[str, Any], path: Path) -> Path:
    """Draw end-to-end latency against generation length, one line per prompt length."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _lines(ax, report, "gen_length", "prompt_length", lambda run: run["total_s"] * 1000, "prompt tokens")
    ax.set_xlabel("generated tokens")
    ax.set_ylabel("end-to-end latency (ms)")
    ax.set_title("End-to-end latency")
    ax.legend(fontsize="x-small")
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def plot_bench(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the four bench plots into ``out_dir`` and return their paths."""
    require_matplotlib()  # fail before any work when matplotlib is missing
    out_dir = Path(out_dir)
    return [
        plot_latency_breakdown(report, out_dir / "latency_breakdown.png"),
        plot_throughput(report, out_dir / "throughput.png"),
        plot_decode_fraction(report, out_dir / "decode_fraction.png"),
        plot_latency_vs_gen_length(report, out_dir / "latency_vs_gen_length.png"),
    ]


def plot_profile(report: dict[str, Any], path: Path) -> Path:
    """Draw the mean decode step as one horizontal bar split into its parts, in microseconds."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(figsize=(9, 2.8))
    left = 0.0
    colors = plt.get_cmap("tab10").colors
    for index, part in enumerate(report["parts"]):
        width = part["mean_us"]
        ax.barh([0], [width], left=left, color=colors[index % len(colors)],
                label=f"{part['name']} ({part['share']:.0%})")
        left += width
    ax.set_yticks([])
    ax.set_xlabel("microseconds per decode step")
    ax.set_title(f"Mean decode step: {report['step_mean_us']:.0f} us over {report['steps']} steps")
    ax.legend(fontsize="small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    saved = _save(fig, Path(path))
    plt.close(fig)
    return saved
