"""Preview the Sightline dashboards without Grafana: run every panel's PromQL against a live
Prometheus (HTTP API ``/api/v1/query_range``, urllib only) and draw one PNG per dashboard.

    python monitoring/grafana/preview.py --prometheus http://127.0.0.1:9090 --out DIR \
        [--minutes 10] [--scrape-interval 15] [--var model=shapes] [--json] [--strict]

Variables are substituted as Grafana does on first load (``panels.default_variables``: "All"
is ``.+``; ``$__rate_interval`` from the step and the scrape interval); ``--var`` overrides
one. :func:`preview` returns a report, printed with ``--json``: per dashboard the PNG, the
expressions that returned no data (no series, or only NaN), the panels with no data in any
of their queries, and the queries Prometheus refused. Exit status: 1 when a query failed, or
with ``--strict`` when a panel had no data; else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402

from monitoring.grafana.panels import (  # noqa: E402
    Query,
    default_variables,
    load_dashboards,
    panel_expressions,
)
from monitoring.grafana.render import Series, render_dashboard  # noqa: E402

__all__ = ["QueryError", "legend", "preview", "query_range"]

POINTS = 200  # samples per series, about Grafana's maxDataPoints for a half-width panel


class QueryError(RuntimeError):
    """Prometheus refused a query (bad PromQL, timeout) or could not be reached."""


def query_range(prometheus: str, expr: str, start: float, end: float, step: float,
                timeout: float = 10.0) -> list[dict]:
    """The ``result`` of ``/api/v1/query_range``: [{"metric": {...}, "values": [[t, "v"]]}]."""
    params = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}",
                                     "end": f"{end:.3f}", "step": f"{step:g}s"})
    url = f"{prometheus.rstrip('/')}/api/v1/query_range?{params}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = json.load(response)
    except urllib.error.HTTPError as err:  # 400/422: the body says what is wrong
        try:
            detail = json.load(err).get("error", "")
        except ValueError:
            detail = ""
        raise QueryError(f"HTTP {err.code} {detail} for {expr!r}") from err
    except (urllib.error.URLError, OSError) as err:
        raise QueryError(f"cannot reach {prometheus}: {err}") from err
    if body.get("status") != "success":
        raise QueryError(f"{body.get('errorType')}: {body.get('error')} for {expr!r}")
    return body["data"]["result"]


def legend(fmt: str, labels: dict[str, str]) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the label's value."""
    if not fmt:
        shown = {k: v for k, v in labels.items() if k not in ("__name__", "job")}
        return ", ".join(f"{k}={v}" for k, v in shown.items()) or "value"
    out = fmt
    for key, value in labels.items():
        out = out.replace("{{" + key + "}}", value).replace("{{ " + key + " }}", value)
    return out


def _series(query: Query, result: list[dict], times: np.ndarray) -> list[Series]:
    """Results aligned on ``times``; NaN where a series has no sample."""
    index = {round(t, 3): i for i, t in enumerate(times)}
    out = []
    for item in result:
        values = np.full(times.shape, np.nan)
        for t, v in item.get("values", []):
            i = index.get(round(float(t), 3))
            if i is not None:
                values[i] = float(v)
        out.append(Series(legend(query.legend, item["metric"]), item["metric"], times, values))
    return out


def _check_reachable(prometheus: str, timeout: float) -> None:
    url = f"{prometheus.rstrip('/')}/api/v1/status/buildinfo"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except (urllib.error.URLError, OSError) as err:
        raise QueryError(f"Prometheus at {prometheus} is not reachable: {err}") from err


def preview(prometheus: str, out_dir: Path, *, minutes: float = 10,
            scrape_interval: float = 15, variables: dict[str, str] | None = None,
            names: list[str] | None = None, end: float | None = None,
            timeout: float = 10.0) -> dict:
    """Query and draw each dashboard (all, or those named by file stem); return the report."""
    _check_reachable(prometheus, timeout)
    end = math.floor(end if end is not None else time.time())
    range_s = max(minutes * 60, 2)
    step = max(1, math.ceil(range_s / POINTS))
    start = end - math.floor(range_s / step) * step
    times = np.arange(start, end + step / 2, step, dtype=np.float64)
    report = {"prometheus": prometheus, "start": start, "end": end, "step_s": step,
              "dashboards": {}}
    dashboards = load_dashboards()
    for name in names or list(dashboards):
        if name not in dashboards:
            raise KeyError(f"no dashboard {name!r} (have {sorted(dashboards)})")
        dashboard = dashboards[name]
        resolved = default_variables(dashboard, step_s=step, scrape_interval_s=scrape_interval,
                                     range_s=range_s) | (variables or {})
        data: dict[int, list[Series]] = {}
        errors: dict[int, list[str]] = {}
        no_data, failed, panels_with_data, panels = [], [], set(), {}
        queries = panel_expressions(dashboard, resolved)
        for query in queries:
            panels[query.panel_id] = query.panel_title
            entry = {"panel_id": query.panel_id, "panel": query.panel_title,
                     "ref_id": query.ref_id, "expr": query.expr}
            try:
                series = _series(query, query_range(prometheus, query.expr, start, end, step,
                                                    timeout), times)
            except QueryError as err:
                errors.setdefault(query.panel_id, []).append(str(err))
                failed.append(entry | {"error": str(err)})
                continue
            series = [s for s in series if np.isfinite(s.values).any()]
            if query.instant:  # a table of what is there now: series that ended are gone
                series = [s for s in series if np.isfinite(s.values[-1])]
            if series:
                panels_with_data.add(query.panel_id)
                data.setdefault(query.panel_id, []).extend(series)
            else:
                no_data.append(entry)
        png = render_dashboard(dashboard, data, errors, Path(out_dir) / f"{name}.png",
                               subtitle=f"(preview of the last {range_s / 60:g} min, "
                                        f"step {step}s, from {prometheus})")
        report["dashboards"][name] = {
            "png": str(png), "queries": len(queries),
            "no_data": no_data, "errors": failed,
            "empty_panels": [title for pid, title in panels.items()
                             if pid not in panels_with_data]}
    return report


def _parse_var(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--var wants name=value, got {text!r}")
    return name, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", required=True, help="base URL, e.g. http://host:9090")
    parser.add_argument("--out", required=True, type=Path, help="directory for the PNGs")
    parser.add_argument("--minutes", type=float, default=10, help="time range (default 10)")
    parser.add_argument("--scrape-interval", type=float, default=15,
                        help="seconds, for $__rate_interval (default 15)")
    parser.add_argument("--var", type=_parse_var, action="append", default=[],
                        help="override a template variable: name=value (repeatable)")
    parser.add_argument("--dashboard", action="append", help="file stem (default: all)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--strict", action="store_true", help="exit 1 if a panel has no data")
    args = parser.parse_args(argv)
    report = preview(args.prometheus, args.out, minutes=args.minutes,
                     scrape_interval=args.scrape_interval, variables=dict(args.var),
                     names=args.dashboard)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, result in report["dashboards"].items():
            print(f"{name}: {result['png']} ({result['queries']} queries, "
                  f"{len(result['no_data'])} without data, {len(result['errors'])} failed)")
            for entry in result["no_data"]:
                print(f"  no data: {entry['panel']} [{entry['ref_id']}] {entry['expr']}")
            for entry in result["errors"]:
                print(f"  FAILED: {entry['panel']} [{entry['ref_id']}] {entry['error']}")
    dashboards = report["dashboards"].values()
    if any(d["errors"] for d in dashboards):
        return 1
    return 1 if args.strict and any(d["empty_panels"] for d in dashboards) else 0


if __name__ == "__main__":
    sys.exit(main())
