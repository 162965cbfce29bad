"""The metrics contract, read from ``monitoring/METRICS.md``: every metric name the server
exports and the labels it carries. The dashboards' lint rules check names and matchers
against it, so a dashboard can only query what the server promises to export.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONTRACT", "Contract", "HISTOGRAM_SUFFIXES", "read_contract"]

CONTRACT = Path(__file__).resolve().parents[1] / "METRICS.md"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
ALWAYS_LABELS = frozenset({"job", "instance"})  # added by Prometheus at scrape time


@dataclass(frozen=True)
class Contract:
    """Metric names of METRICS.md and their labels (``None``: labels not spelled out)."""

    labels: dict[str, frozenset[str] | None]
    prefixes: tuple[str, ...] = ()  # from wildcards such as ``python_gc_*``

    def base(self, name: str) -> str | None:
        """The contract metric ``name`` belongs to (``x_bucket`` -> histogram ``x``)."""
        if name in self.labels:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in self.labels:
                return name[: -len(suffix)]
        if name.startswith(self.prefixes):
            return name
        return None

    def labels_of(self, name: str) -> frozenset[str] | None:
        base = self.base(name)
        labels = self.labels.get(base) if base else None
        if labels is None:
            return None
        return labels | ALWAYS_LABELS | ({"le"} if name.endswith("_bucket") else set())


_CONTRACT_NAME = re.compile(r"`([a-zA-Z_:][a-zA-Z0-9_:]*\*?)(\{([^}]*)\})?`")


def read_contract(path: Path = CONTRACT) -> Contract:
    """Every backticked ``name`` or ``name{label,...}`` with an underscore in METRICS.md; a
    ``{...}`` label list repeats the previous metric's labels on that line, and ``x_bucket{..}``
    of a histogram ``x`` already read is an example, not a definition. ``up`` is added:
    Prometheus makes it for every target."""
    labels: dict[str, frozenset[str] | None] = {"up": frozenset()}
    prefixes = []
    for line in Path(path).read_text().splitlines():
        previous = None
        for match in _CONTRACT_NAME.finditer(line):
            name, spec = match.group(1), match.group(3)
            if "_" not in name:
                continue  # a label name such as `model`, not a metric
            if name.endswith("*"):
                prefixes.append(name[:-1])
                continue
            if any(name.endswith(s) and name[: -len(s)] in labels for s in HISTOGRAM_SUFFIXES):
                continue  # a series of a histogram defined above, quoted as an example
            if spec is None:
                found = frozenset()
            elif spec.strip() == "...":
                found = previous
            else:
                found = frozenset(part.split("=")[0].strip() for part in spec.split(",")
                                  if part.strip())
            known = labels.get(name)
            labels[name] = found if known is None else known | (found or frozenset())
            previous = found
    return Contract(labels=labels, prefixes=tuple(prefixes))
