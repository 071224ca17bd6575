"""Just enough PromQL to list the metric names an expression reads, and the names a gateway's
/metrics exposition offers (with the _total/_bucket/_count/_sum/_created series of each family)."""
from __future__ import annotations

import re

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or",
             "unless", "inf", "nan", "atan2"}
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,")
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "summary": ("", "_count", "_sum", "_created"), "untyped": ("",), "info": ("_info",)}


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (Grafana's $variables allowed)."""
    e = _STRING.sub('""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = _GROUPING.sub(" ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)
    names = set()
    for m in _NAME.finditer(e):
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":  # 10m, 1e-9, 0.5
            continue
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(m.group(0))
    return names


def template_metric(query: str) -> set[str]:
    """The metric of a Grafana ``label_values(metric, label)`` query (none for ``label_values(label)``)."""
    m = _LABEL_VALUES.match(query)
    return {m.group(1)} if m else (set() if query.strip().startswith("label_values(") else metric_names(query))


def exposition_names(text: str) -> set[str]:
    """Every series name a Prometheus text exposition offers, samples or not yet."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(maxsplit=3)
            base = family.removesuffix("_total") if kind == "counter" else family
            names.update(base + s for s in _SUFFIXES.get(kind.strip(), ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names
