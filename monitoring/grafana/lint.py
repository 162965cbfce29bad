"""Lint rules for the Sightline dashboards, after Grafana's dashboard-linter
(github.com/grafana/dashboard-linter), plus the rules of our metrics contract.

Each rule is a function ``rule(dashboard, contract) -> list[str]`` of problems (empty: passes),
registered in ``RULES`` under the linter's name where it has one. Ours are prefixed
``sightline-``. What each checks, and why we keep it:

- ``template-datasource-rule``: one datasource variable ``datasource`` (label "Data source") of
  query ``prometheus``, so a dashboard moves between Grafanas without edits.
- ``template-instance-rule`` / ``sightline-template-model-rule``: ``instance`` and ``model``
  are Prometheus query variables on ``${datasource}``, multi-select, "All" = ``.+`` (a short
  regex rather than a long alternation of every value).
- ``template-label-promql-rule``: variable queries are ``label_values(<selector>, <label>)``
  (or another Grafana Prometheus function) whose metric and label are in the contract.
- ``template-on-time-change-reload-rule``: query variables refresh on time-range change, as
  models and instances come and go.
- ``panel-datasource-rule``: every panel and target uses ``${datasource}``.
- ``panel-title-description-rule``: every panel has a title; every non-row panel a description.
- ``panel-units-rule``: every query panel sets ``fieldConfig.defaults.unit`` to a Grafana unit.
- ``panel-no-targets-rule``: every query panel has at least one non-empty expression.
- ``target-rate-interval-rule``: every range selector is ``[$__rate_interval]``.
- ``target-counter-agg-rule``: counters (``_total``) and histogram series (``_bucket``,
  ``_sum``, ``_count``) are read only through ``rate``/``irate``/``increase``.
- ``target-job-rule`` / ``target-instance-rule``: every selector matches ``job=~"$job"`` and
  ``instance=~"$instance"`` (``job`` is a hidden constant: the contract fixes the job name, so
  the template-job-rule's query variable is not used).
- ``sightline-target-model-rule``: every selector of a metric with a ``model`` label matches
  ``model=~"$model"``.
- ``sightline-contract-rule``: every metric is named in ``monitoring/METRICS.md`` (or is
  ``up``), and every matcher label is one of that metric's contract labels.
- ``sightline-layout-rule``: uid, title and a recent ``schemaVersion`` are set; panel ids are
  unique; grid positions fit 24 columns and do not overlap.

``target-promql-rule`` (every expression parses) needs a PromQL parser: the tests run
``promtool`` on :func:`panels.panel_expressions`; :func:`promql.selectors` raises on what it
cannot tokenize, so a malformed expression also fails the target rules above.
"""

from __future__ import annotations

from collections.abc import Callable

from monitoring.grafana.contract import Contract, read_contract
from monitoring.grafana.panels import NO_QUERY_TYPES, iter_panels
from monitoring.grafana.promql import Selector, selectors, variable_selectors

__all__ = ["RULES", "lint"]

MIN_SCHEMA_VERSION = 36  # Grafana 9.0+; ours are written at 39 (Grafana 10.3/11)

# Grafana unit ids we may use (grafana-data valueFormats/categories.ts); extend as needed.
UNITS = frozenset({
    "none", "short", "string", "percent", "percentunit", "bool", "bool_yes_no",
    "bytes", "decbytes", "bits", "kbytes", "mbytes", "Bps", "binBps",
    "ns", "µs", "ms", "s", "m", "h", "d", "dtdurations", "dtdurationms", "clocks",
    "hertz", "reqps", "rps", "ops", "cps", "wps", "iops", "rpm", "opm", "cpm",
})
RATE_FUNCTIONS = ("rate", "irate", "increase")
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
# Grafana's Prometheus variable functions (label_values(...), query_result(...), ...).
VARIABLE_FUNCTIONS = ("label_values", "label_names", "metrics", "query_result")


# -- the rules ------------------------------------------------------------------------------

Rule = Callable[[dict, Contract], list[str]]
RULES: dict[str, Rule] = {}


def _rule(name: str):
    def register(fn: Rule) -> Rule:
        RULES[name] = fn
        return fn
    return register


def _variables(d: dict) -> dict[str, dict]:
    return {v["name"]: v for v in d.get("templating", {}).get("list", [])}


def _query_panels(d: dict):
    return [p for p in iter_panels(d) if p.get("type") not in NO_QUERY_TYPES]


def _targets(d: dict):
    for panel in _query_panels(d):
        for target in panel.get("targets", []):
            yield panel, target


def _where(panel: dict, target: dict | None = None) -> str:
    ref = f" target {target.get('refId')}" if target is not None else ""
    return f"panel {panel.get('id')} {panel.get('title')!r}{ref}"


def _uses_datasource_variable(source) -> bool:
    uid = source.get("uid") if isinstance(source, dict) else source
    return uid in ("$datasource", "${datasource}")


@_rule("template-datasource-rule")
def template_datasource(d, contract):
    sources = [v for v in _variables(d).values() if v.get("type") == "datasource"]
    if len(sources) != 1:
        return [f"want one datasource variable, found {len(sources)}"]
    v = sources[0]
    problems = []
    if v["name"] != "datasource" or v.get("label") != "Data source":
        problems.append(f"datasource variable is {v['name']!r} labelled {v.get('label')!r}, "
                        "want 'datasource' labelled 'Data source'")
    if v.get("query") != "prometheus":
        problems.append(f"datasource variable queries {v.get('query')!r}, want 'prometheus'")
    return problems


def _check_query_variable(d, name: str) -> list[str]:
    v = _variables(d).get(name)
    if v is None:
        return [f"no {name!r} variable"]
    problems = []
    if v.get("type") != "query":
        problems.append(f"{name} variable is of type {v.get('type')!r}, want 'query'")
    if not _uses_datasource_variable(v.get("datasource")):
        problems.append(f"{name} variable uses datasource {v.get('datasource')!r}, "
                        "want ${datasource}")
    if v.get("label") != name.title():
        problems.append(f"{name} variable labelled {v.get('label')!r}, want {name.title()!r}")
    if not v.get("multi") or not v.get("includeAll"):
        problems.append(f"{name} variable should be multi-select with an 'All' option")
    if v.get("allValue") != ".+":
        problems.append(f"{name} variable allValue is {v.get('allValue')!r}, want '.+'")
    return problems


@_rule("template-instance-rule")
def template_instance(d, contract):
    return _check_query_variable(d, "instance")


@_rule("sightline-template-model-rule")
def template_model(d, contract):
    return _check_query_variable(d, "model")


def _variable_query(v: dict) -> str:
    query = v.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


@_rule("template-label-promql-rule")
def template_label_promql(d, contract):
    problems = []
    for v in _variables(d).values():
        if v.get("type") != "query":
            continue
        try:
            function, inner, label = variable_selectors(_variable_query(v))
            if function not in VARIABLE_FUNCTIONS:
                problems.append(f"variable {v['name']}: unknown function {function!r}")
                continue
            for selector in selectors(inner):
                problems += _contract_problems(selector, contract, f"variable {v['name']}")
                known = contract.labels_of(selector.name or "")
                if label and known is not None and label not in known:
                    problems.append(f"variable {v['name']}: {selector.name} has no label "
                                    f"{label!r} in the contract ({sorted(known)})")
        except ValueError as err:
            problems.append(f"variable {v['name']}: {err}")
    return problems


@_rule("template-on-time-change-reload-rule")
def template_reload(d, contract):
    return [f"variable {v['name']} refreshes {v.get('refresh')!r}, want 2 (on time range change)"
            for v in _variables(d).values() if v.get("type") == "query" and v.get("refresh") != 2]


@_rule("panel-datasource-rule")
def panel_datasource(d, contract):
    problems = [f"{_where(p)} uses datasource {p.get('datasource')!r}, want ${{datasource}}"
                for p in _query_panels(d) if not _uses_datasource_variable(p.get("datasource"))]
    problems += [f"{_where(p, t)} uses datasource {t.get('datasource')!r}, want ${{datasource}}"
                 for p, t in _targets(d)
                 if "datasource" in t and not _uses_datasource_variable(t["datasource"])]
    return problems


@_rule("panel-title-description-rule")
def panel_title_description(d, contract):
    problems = [f"{_where(p)} has no title" for p in iter_panels(d) if not p.get("title")]
    problems += [f"{_where(p)} has no description" for p in iter_panels(d)
                 if p.get("type") != "row" and not p.get("description", "").strip()]
    return problems


@_rule("panel-units-rule")
def panel_units(d, contract):
    problems = []
    for p in _query_panels(d):
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if unit not in UNITS:
            problems.append(f"{_where(p)} has unit {unit!r}, want one of the Grafana units")
        for override in p.get("fieldConfig", {}).get("overrides", []):
            for prop in override.get("properties", []):
                if prop.get("id") == "unit" and prop.get("value") not in UNITS:
                    problems.append(f"{_where(p)} overrides unit to {prop.get('value')!r}")
    return problems


@_rule("panel-no-targets-rule")
def panel_no_targets(d, contract):
    return [f"{_where(p)} has no query" for p in _query_panels(d)
            if not any(t.get("expr", "").strip() for t in p.get("targets", []))]


def _each_selector(d):
    """(panel, target, selector) for every selector of every target; unreadable expressions
    become (panel, target, ValueError)."""
    for panel, target in _targets(d):
        try:
            for selector in selectors(target.get("expr", "")):
                yield panel, target, selector
        except ValueError as err:
            yield panel, target, err


def _per_selector(check):
    def rule(d, contract):
        problems = []
        for panel, target, selector in _each_selector(d):
            if isinstance(selector, ValueError):
                problems.append(f"{_where(panel, target)}: {selector}")
                continue
            problem = check(selector, contract)
            if problem:
                problems.append(f"{_where(panel, target)}: {problem} in {target['expr']!r}")
        return problems
    return rule


@_rule("target-rate-interval-rule")
@_per_selector
def target_rate_interval(s, contract):
    if s.range is not None and s.range != "$__rate_interval":
        return f"{s.name}[{s.range}] should use [$__rate_interval]"


@_rule("target-counter-agg-rule")
@_per_selector
def target_counter_agg(s, contract):
    if (s.name or "").endswith(COUNTER_SUFFIXES) and (
            s.range is None or s.function not in RATE_FUNCTIONS):
        return f"{s.name} is not read through {'/'.join(RATE_FUNCTIONS)}"


def _required_matcher(label: str, applies: Callable[[Selector, Contract], bool] = None):
    def check(s, contract):
        if applies is not None and not applies(s, contract):
            return None
        if s.matchers.get(label) != ("=~", f"${label}"):
            return f'{s.name} lacks {label}=~"${label}"'
    return check


RULES["target-job-rule"] = _per_selector(_required_matcher("job"))
RULES["target-instance-rule"] = _per_selector(_required_matcher("instance"))
RULES["sightline-target-model-rule"] = _per_selector(_required_matcher(
    "model", lambda s, c: "model" in (c.labels_of(s.name or "") or ())))


def _contract_problems(s: Selector, contract: Contract, where: str) -> list[str]:
    if s.name is None:
        return [f"{where}: a selector without a metric name ({s.matchers})"]
    if contract.base(s.name) is None:
        return [f"{where}: metric {s.name} is not in METRICS.md"]
    known = contract.labels_of(s.name)
    if known is None:
        return []
    return [f"{where}: {s.name} has no label {label!r} in the contract ({sorted(known)})"
            for label in s.matchers if label not in known]


@_rule("sightline-contract-rule")
def contract_rule(d, contract):
    problems = []
    for panel, target, selector in _each_selector(d):
        if isinstance(selector, ValueError):
            problems.append(f"{_where(panel, target)}: {selector}")
        else:
            problems += _contract_problems(selector, contract, _where(panel, target))
    return problems


@_rule("sightline-layout-rule")
def layout(d, contract):
    problems = [f"dashboard {key} is not set" for key in ("uid", "title") if not d.get(key)]
    if d.get("schemaVersion", 0) < MIN_SCHEMA_VERSION:
        problems.append(f"schemaVersion {d.get('schemaVersion')} < {MIN_SCHEMA_VERSION}")
    ids = [p.get("id") for p in iter_panels(d)]
    problems += [f"panel id {i} used {ids.count(i)} times" for i in sorted(set(ids), key=str)
                 if i is None or ids.count(i) > 1]
    cells: dict[tuple[int, int], str] = {}
    for p in d.get("panels", []):  # a collapsed row's panels are laid out when it opens
        g = p.get("gridPos", {})
        x, y, w, h = (g.get(k) for k in ("x", "y", "w", "h"))
        if None in (x, y, w, h) or w < 1 or h < 1 or x < 0 or x + w > 24:
            problems.append(f"{_where(p)} has gridPos {g}, outside the 24-column grid")
            continue
        for cell in ((cx, cy) for cx in range(x, x + w) for cy in range(y, y + h)):
            if cell in cells:
                problems.append(f"{_where(p)} overlaps {cells[cell]} at {cell}")
                break
            cells[cell] = _where(p)
    return problems


def lint(dashboard: dict, contract: Contract | None = None) -> dict[str, list[str]]:
    """{rule name: problems} for every rule in ``RULES``."""
    contract = contract or read_contract()
    return {name: rule(dashboard, contract) for name, rule in RULES.items()}
