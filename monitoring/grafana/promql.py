"""A small PromQL reader for dashboard queries: the vector selectors of an expression, with
their matchers, their range and the function around them, template variables left in place
(``$__rate_interval``, ``"$model"``). Enough for lint rules; it is not a parser, and the
tests leave "does it parse" to ``promtool``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Selector", "selectors", "variable_selectors"]


@dataclass
class Selector:
    name: str | None
    matchers: dict[str, tuple[str, str]] = field(default_factory=dict)  # label -> (op, value)
    range: str | None = None         # "$__rate_interval" in foo[$__rate_interval]
    function: str | None = None      # the innermost call around it, e.g. "rate"


_TOKEN = re.compile(r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<punct>[{}(),])
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=])
  | (?P<space>\s+)
""", re.VERBOSE)
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count",
                 "count_values", "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "atan2", "inf", "nan", "offset"}


def _tokens(expr: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expr):
        match = _TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        if match.lastgroup != "space":
            tokens.append((match.lastgroup, match.group()))
        pos = match.end()
    return tokens


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of ``expr`` (template variables left in place), each with its
    matchers, its range and its innermost enclosing function. Raises ValueError on what a
    dashboard query should never contain (unbalanced brackets, a matcher without a value)."""
    tokens = _tokens(expr)
    found, calls, pending, i = [], [], None, 0
    while i < len(tokens):
        kind, text = tokens[i]
        after = tokens[i + 1] if i + 1 < len(tokens) else ("", "")
        if kind == "ident" and text in _LABEL_LISTS:
            i += 1
            if after == ("punct", "("):  # skip the label list
                while i < len(tokens) and tokens[i] != ("punct", ")"):
                    i += 1
                i += 1
            continue
        if kind == "ident" and text.lower() in _KEYWORDS:
            if text == "offset":
                raise ValueError(f"offset is not used in dashboards: {expr!r}")
            i += 1
            continue
        if kind == "ident" and (after == ("punct", "(") or text in _AGGREGATIONS):
            pending = text
            i += 1
            continue
        if (kind, text) == ("punct", "("):
            calls.append(pending)
            pending = None
            i += 1
            continue
        if (kind, text) == ("punct", ")"):
            if not calls:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            calls.pop()
            i += 1
            continue
        if kind == "ident" or (kind, text) == ("punct", "{"):
            selector = Selector(name=text if kind == "ident" else None,
                                function=calls[-1] if calls else None)
            i += 1 if kind == "ident" else 0
            if i < len(tokens) and tokens[i] == ("punct", "{"):
                i += 1
                while tokens[i] != ("punct", "}"):
                    if tokens[i] == ("punct", ","):
                        i += 1
                        continue
                    (k1, label), (k2, op), (k3, value) = tokens[i:i + 3]
                    if k1 != "ident" or k2 != "op" or k3 != "string":
                        raise ValueError(f"bad matcher near {label!r} in {expr!r}")
                    selector.matchers[label] = (op, value[1:-1])
                    i += 3
                i += 1
            if i < len(tokens) and tokens[i][0] == "range":
                selector.range = tokens[i][1][1:-1].strip()
                i += 1
            found.append(selector)
            continue
        i += 1  # numbers, strings (function arguments), operators, commas
    if calls:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return found


_VARIABLE_QUERY = re.compile(r"^\s*(\w+)\((.*)\)\s*$", re.DOTALL)


def variable_selectors(query: str) -> tuple[str, str, str | None]:
    """``label_values(sel, label)`` -> (function, selector or query, label or None)."""
    match = _VARIABLE_QUERY.match(query)
    if match is None:
        raise ValueError(f"variable query {query!r} is not function(...)")
    function, args = match.groups()
    if function == "label_values" and "," in args:
        selector, label = args.rsplit(",", 1)
        return function, selector.strip(), label.strip()
    return function, args.strip(), None
