"""Draw one Grafana dashboard with matplotlib from query results: a PNG laid out on the
dashboard's own 24-column grid, each panel titled with its unit.

Called by ``preview.py``, which fetches the data. Panel types: timeseries (lines, stacked when
the panel stacks, log axis when it asks for one, threshold lines), stat (last value coloured by
threshold), gauge (a bar over threshold bands), heatmap (bucket counts from cumulative ``le``
series), state-timeline (bars where a series has values), table (last values, one row per
series) and text. Anything else is drawn as a timeseries. Missing data is written in the panel.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from monitoring.grafana.panels import iter_panels  # noqa: E402

__all__ = ["Series", "format_value", "render_dashboard"]

COLUMN_IN, ROW_IN = 0.85, 0.42  # inches per grid column and per grid row
COLORS = {"green": "#56A64B", "yellow": "#F2CC0C", "red": "#E02F44", "orange": "#FF9830",
          "blue": "#3274D9", "purple": "#A352CC", "text": "#333333"}


@dataclass
class Series:
    """One series of one query: its legend, its labels and its samples (NaN where missing)."""

    legend: str
    labels: dict[str, str]
    times: np.ndarray   # (n,) float64 unix seconds
    values: np.ndarray  # (n,) float64

    def last(self) -> float:
        finite = self.values[np.isfinite(self.values)]
        return float(finite[-1]) if finite.size else math.nan


def _si(value: float, suffix: str = "") -> str:
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{prefix}{suffix}"
    return f"{value:.3g}{suffix}"


def format_value(value: float, unit: str) -> str:
    """``value`` as Grafana would print it in ``unit`` (the units the dashboards use)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if unit == "percentunit":
        return f"{value * 100:.4g}%"
    if unit == "percent":
        return f"{value:.4g}%"
    if unit == "s":
        for factor, name in ((3600, "h"), (60, "min"), (1, "s"), (1e-3, "ms"), (1e-6, "µs")):
            if abs(value) >= factor:
                return f"{value / factor:.3g} {name}"
        return "0 s" if value == 0 else f"{value * 1e9:.3g} ns"
    if unit == "bytes":
        for power, name in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
            if abs(value) >= 1024**power:
                return f"{value / 1024**power:.3g} {name}"
        return f"{value:.0f} B"
    suffix = {"reqps": " req/s", "ops": " ops/s", "cps": " c/s", "rps": " r/s"}.get(unit, "")
    return _si(value, suffix) if unit != "none" else f"{value:.3g}"


def _color(name: str) -> str:
    return COLORS.get(name, name if name.startswith("#") or name.isalpha() else "gray")


def _threshold_color(value: float, defaults: dict) -> str:
    steps = defaults.get("thresholds", {}).get("steps") or [{"color": "green", "value": None}]
    color = steps[0]["color"]
    for step in steps[1:]:
        if step.get("value") is not None and math.isfinite(value) and value >= step["value"]:
            color = step["color"]
    return _color(color)


def _message(ax, text: str, color: str = "gray") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", color=color, fontsize=8, wrap=True,
            transform=ax.transAxes)


def _timeseries(ax, panel: dict, series: list[Series], unit: str) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    custom = defaults.get("custom", {})
    stacked = custom.get("stacking", {}).get("mode", "none") != "none"
    if stacked and series:
        times = series[0].times
        layers = [np.nan_to_num(s.values) for s in series]  # all on the same times
        ax.stackplot([datetime.fromtimestamp(t) for t in times], *layers,
                     labels=[s.legend for s in series], alpha=0.8)
    else:
        for s in series:
            ax.plot([datetime.fromtimestamp(t) for t in s.times], s.values, lw=1,
                    label=s.legend, drawstyle="steps-mid" if custom.get("drawStyle") == "bars"
                    else "default")
    finite = (np.sum(layers, axis=0) if stacked and series else
              np.concatenate([s.values[np.isfinite(s.values)] for s in series] or [[]]))
    if custom.get("scaleDistribution", {}).get("type") == "log" and (finite > 0).any():
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))  # labels within one decade
        ax.yaxis.set_minor_formatter(NullFormatter())
    if custom.get("thresholdsStyle", {}).get("mode", "off") != "off":
        for step in defaults.get("thresholds", {}).get("steps", [])[1:]:
            ax.axhline(step["value"], color=_color(step["color"]), lw=1, ls="--")
    low, high = defaults.get("min"), defaults.get("max")
    if high is None and low is not None and finite.size:
        high = max(finite.max() * 1.1, low + 1e-9)  # keep a flat line off the frame
    if low is not None or high is not None:
        ax.set_ylim(bottom=low, top=high)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: format_value(v, unit)))
    _time_axis(ax, series)
    if series:
        ax.legend(fontsize=5.5, loc="upper left", ncol=2 if len(series) > 4 else 1,
                  framealpha=0.6)


def _time_axis(ax, series: list[Series]) -> None:
    """The whole queried range on x, as Grafana shows it, however little of it has data."""
    times = series[0].times
    ax.set_xlim(datetime.fromtimestamp(times[0]), datetime.fromtimestamp(times[-1]))
    ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=7))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.tick_params(labelsize=6)


def _stat(ax, panel: dict, series: list[Series], unit: str) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    ax.set_axis_off()
    rows = series[:8]
    for i, s in enumerate(rows):
        y = 1 - (i + 0.5) / len(rows)
        value = s.last()
        label = f"{s.legend}: " if s.legend and len(rows) > 1 else ""
        ax.text(0.5, y, label + format_value(value, unit), ha="center", va="center",
                fontsize=16 if len(rows) == 1 else 9, weight="bold",
                color=_threshold_color(value, defaults), transform=ax.transAxes)


def _gauge(ax, panel: dict, series: list[Series], unit: str) -> None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    low, high = defaults.get("min", 0), defaults.get("max", 1)
    steps = defaults.get("thresholds", {}).get("steps", [])
    ax.set_xlim(low, high)
    ax.set_ylim(-0.5, len(series) - 0.5)
    for i, s in enumerate(series):
        bounds = [low] + [st["value"] for st in steps[1:]] + [high]
        for st, start, stop in zip(steps, bounds, bounds[1:], strict=False):
            ax.barh(i, stop - start, left=start, height=0.8, color=_color(st["color"]),
                    alpha=0.25)
        value = s.last()
        if math.isfinite(value):
            ax.barh(i, min(value, high) - low, left=low, height=0.4,
                    color=_threshold_color(value, defaults))
        ax.text(high, i, f" {s.legend} {format_value(value, unit)}", va="center", ha="right",
                fontsize=7, weight="bold")
    ax.set_yticks([])
    ax.tick_params(labelsize=6)


def _heatmap(ax, panel: dict, series: list[Series], unit: str) -> None:
    def upper(s):
        return float(s.labels.get("le", "inf").replace("+Inf", "inf"))

    ordered = sorted(series, key=upper)
    cumulative = np.nan_to_num(np.array([s.values for s in ordered]))  # (buckets, times)
    counts = np.diff(cumulative, axis=0, prepend=0).clip(min=0)       # per bucket
    edges = mdates.date2num([datetime.fromtimestamp(t) for t in ordered[0].times])
    # each cell spans one step and shows the count at its right edge, (buckets, times - 1)
    ax.pcolormesh(edges, np.arange(len(ordered) + 1), counts[:, 1:], cmap="Oranges",
                  shading="flat")
    y_unit = panel.get("options", {}).get("yAxis", {}).get("unit", "short")
    ax.set_yticks(np.arange(len(ordered)) + 1,
                  [format_value(upper(s), y_unit) if math.isfinite(upper(s)) else "+Inf"
                   for s in ordered], fontsize=5.5)
    ax.xaxis_date()
    _time_axis(ax, series)


def _state_timeline(ax, panel: dict, series: list[Series], unit: str) -> None:
    for i, s in enumerate(series):
        present = np.isfinite(s.values)
        step = np.median(np.diff(s.times)) if len(s.times) > 1 else 1.0
        spans, start = [], None
        for t, on in zip(s.times, present, strict=True):
            if on and start is None:
                start = t
            if not on and start is not None:
                spans.append((start, t - start))
                start = None
        if start is not None:
            spans.append((start, s.times[-1] + step - start))
        ax.broken_barh([(mdates.date2num(datetime.fromtimestamp(a)),
                         b / 86400) for a, b in spans], (i - 0.4, 0.8), color=COLORS["green"])
    ax.set_yticks(range(len(series)), [s.legend for s in series], fontsize=6)
    ax.xaxis_date()
    _time_axis(ax, series)


def _table(ax, panel: dict, series: list[Series], unit: str) -> None:
    ax.set_axis_off()
    organize = next((t["options"] for t in panel.get("transformations", [])
                     if t.get("id") == "organize"), {})
    order = organize.get("indexByName") or {}
    columns = sorted({k for s in series for k in s.labels if k != "__name__"},
                     key=lambda k: (order.get(k, len(order)), k))
    if not organize.get("excludeByName", {}).get("Value"):
        columns.append("Value")
    cells = [[format_value(s.last(), unit) if c == "Value" else s.labels.get(c, "")[:16]
              for c in columns] for s in series[:12]]
    table = ax.table(cellText=cells, colLabels=columns, loc="upper center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(6)


def _text(ax, panel: dict, width_columns: int) -> None:
    ax.set_axis_off()
    content = re.sub(r"\*+|`|^#+ *", "", panel.get("options", {}).get("content", ""),
                     flags=re.MULTILINE)
    wrapped = "\n".join(textwrap.fill(p, width=int(width_columns * 6.5))
                        for p in content.split("\n\n"))
    ax.text(0.01, 0.95, wrapped, va="top", ha="left", fontsize=7, transform=ax.transAxes)


DRAW = {"stat": _stat, "gauge": _gauge, "heatmap": _heatmap,
        "state-timeline": _state_timeline, "table": _table}


def render_dashboard(dashboard: dict, data: dict[int, list[Series]],
                     errors: dict[int, list[str]], out: Path, subtitle: str = "") -> Path:
    """Write ``out`` (PNG): every panel at its gridPos, drawn from ``data[panel id]``;
    ``errors[panel id]`` is written in place of a chart."""
    bottom = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"]),
                 default=1)
    width, height = 24 * COLUMN_IN, (bottom + 1.5) * ROW_IN
    fig = Figure(figsize=(width, height), dpi=80)
    fig.suptitle(f"{dashboard['title']}  {subtitle}", x=0.01, y=1 - 0.25 / height,
                 ha="left", fontsize=12, weight="bold")

    def rect(grid, pad_left=0.12, pad_bottom=0.1, pad_top=0.32):
        x, y, w, h = (grid[k] for k in ("x", "y", "w", "h"))
        top_in = (y + 1.5) * ROW_IN
        return [(x * COLUMN_IN + pad_left) / width,
                1 - (top_in + h * ROW_IN - pad_bottom) / height,
                (w * COLUMN_IN - pad_left - 0.12) / width,
                (h * ROW_IN - pad_top - pad_bottom) / height]

    for panel in iter_panels(dashboard):
        grid, kind = panel["gridPos"], panel.get("type")
        if kind == "row":
            fig.text(0.005, 1 - ((grid["y"] + 1.5) * ROW_IN + 0.25) / height, panel["title"],
                     fontsize=10, weight="bold", color="#1f60c4")
            continue
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        axes_pad = 0.6 if kind in ("timeseries", "heatmap", None) else (
            1.6 if kind == "state-timeline" else 0.12)
        ax = fig.add_axes(rect(grid, pad_left=axes_pad, pad_bottom=0.35 if axes_pad > 0.12
                               else 0.1))
        ax.set_title(f"{panel.get('title', '')}" + (f"  [{unit}]" if unit else ""),
                     fontsize=8, loc="left")
        if kind == "text":
            _text(ax, panel, grid["w"])
            continue
        series = data.get(panel["id"], [])
        if errors.get(panel["id"]):
            ax.set_axis_off()
            _message(ax, "query error:\n" + "\n".join(errors[panel["id"]])[:300], "red")
        elif not series:
            ax.set_axis_off()
            _message(ax, "No data")
        else:
            DRAW.get(kind, _timeseries)(ax, panel, series, unit)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
