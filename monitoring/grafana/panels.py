"""Read the Grafana dashboards under ``monitoring/grafana/dashboards/``: their panels, their
template variables, and each panel's PromQL with the variables substituted.

Shared by the dashboard tests (which validate every expression with ``promtool``) and by
``preview.py`` (which runs every expression against a live Prometheus), so both see exactly
the queries Grafana would send. Substitution follows Grafana's three spellings (``$var``,
``${var}``, ``[[var]]``); a variable that is neither defined by the dashboard nor given by the
caller is an error naming the expression, never left in place.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DASHBOARD_DIR", "Query", "default_variables", "iter_panels", "load_dashboards",
           "panel_expressions", "rate_interval", "substitute"]

DASHBOARD_DIR = Path(__file__).resolve().parent / "dashboards"

# Panel types that carry no query: a row groups panels, a text panel holds notes.
NO_QUERY_TYPES = ("row", "text")

_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[\w]+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]")


@dataclass(frozen=True)
class Query:
    """One target of one panel, its expression already substituted."""

    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    legend: str       # Grafana's legendFormat, e.g. "{{model}} p99"; "" for the raw labels
    instant: bool     # a table of current values rather than a time series


def load_dashboards(directory: Path = DASHBOARD_DIR) -> dict[str, dict]:
    """{file stem: dashboard JSON} for every ``*.json`` in ``directory``, sorted by name."""
    dashboards = {path.stem: json.loads(path.read_text())
                  for path in sorted(Path(directory).glob("*.json"))}
    if not dashboards:
        raise FileNotFoundError(f"no dashboard JSON under {directory}")
    return dashboards


def iter_panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, rows included, with the panels of collapsed rows after their row."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def rate_interval(step_s: float, scrape_interval_s: float) -> str:
    """Grafana's ``$__rate_interval``: max(step + scrape interval, 4 x scrape interval)."""
    return f"{int(max(step_s + scrape_interval_s, 4 * scrape_interval_s))}s"


def default_variables(dashboard: dict, *, step_s: float = 15, scrape_interval_s: float = 15,
                      range_s: float = 3600) -> dict[str, str]:
    """The values Grafana substitutes on first load: constants, each multi-value variable's
    "All" value (its ``allValue``, else ``.+``), and the built-in interval variables."""
    variables = {
        "__rate_interval": rate_interval(step_s, scrape_interval_s),
        "__interval": f"{int(max(step_s, 1))}s",
        "__range": f"{int(range_s)}s",
    }
    for var in dashboard.get("templating", {}).get("list", []):
        kind, name = var.get("type"), var["name"]
        if kind == "datasource":
            continue  # a datasource appears in panel datasource fields, never in PromQL
        if kind == "constant":
            variables[name] = var["query"]
        elif var.get("includeAll"):
            variables[name] = var.get("allValue") or ".+"
        else:
            current = var.get("current", {}).get("value")
            if current in (None, "", [], "$__all"):
                raise ValueError(f"variable {name!r} of {dashboard.get('title')!r} has no "
                                 f"'All' option and no current value to preview with")
            variables[name] = current[0] if isinstance(current, list) else current
    return variables


def substitute(expr: str, variables: dict[str, str]) -> str:
    """``expr`` with every ``$var``, ``${var}``, ``${var:format}`` and ``[[var]]`` replaced."""
    def value(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in variables:
            raise KeyError(f"variable ${name} in {expr!r} is undefined "
                           f"(known: {', '.join(sorted(variables))})")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def panel_expressions(dashboard: dict, variables: dict[str, str] | None = None) -> list[Query]:
    """Every query target of every panel, substituted with ``variables``, e.g.
    ``{"model": "shapes", "__rate_interval": "1m"}``; names not given take their
    :func:`default_variables` value."""
    resolved = default_variables(dashboard) | (variables or {})
    queries = []
    for panel in iter_panels(dashboard):
        if panel.get("type") in NO_QUERY_TYPES:
            continue
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            queries.append(Query(
                panel_id=panel["id"], panel_title=panel.get("title", ""),
                panel_type=panel["type"], ref_id=target.get("refId", "A"),
                expr=substitute(target.get("expr", ""), resolved),
                legend=target.get("legendFormat", ""),
                instant=bool(target.get("instant")) and not target.get("range", False)))
    return queries
