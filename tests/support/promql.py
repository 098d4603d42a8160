"""The metric names a PromQL expression reads, for the dashboard and alert-rule checks.

Not a full PromQL parser, but enough for selectors, aggregations, functions, binary
operators, ranges, offsets and Grafana's variables: strings, label matchers, ranges and the
label lists of ``by``/``without``/``on``/``ignoring``/``group_*`` are removed; what is left
that looks like an identifier and is not a keyword or a call is a metric name.
"""

from __future__ import annotations

import re

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
            "offset", "inf", "nan", "atan2"}
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(?!\w)(\s*\()?")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?:([a-zA-Z_:][\w:]*)\s*(?:\{[^}]*\})?\s*,\s*)?\w+\s*\)\s*$")
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\s*\{([^{}]*)\}")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """Metric names read by a PromQL expression (or a Grafana ``label_values(...)`` query)."""
    found = _LABEL_VALUES.match(expr)
    if found:
        return {found.group(1)} if found.group(1) else set()
    text = _GRAFANA_VAR.sub("5m", expr)
    text = _STRING.sub('""', text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name in KEYWORDS:
            continue
        names.add(name)
    return names


def selector_labels(expr: str) -> dict[str, set[str]]:
    """Label names matched in each ``metric{...}`` selector: {metric: {label, ...}}."""
    text = _STRING.sub('""', _GRAFANA_VAR.sub("5m", expr))
    labels: dict[str, set[str]] = {}
    for metric, matchers in _SELECTOR.findall(text):
        labels.setdefault(metric, set()).update(_MATCHER_LABEL.findall(matchers))
    return labels


_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_TEMPLATE_LEGEND = re.compile(r"\{\{\s*([a-zA-Z_]\w*)\s*\}\}")


def grouping_labels(expr: str) -> set[str]:
    """Label names in ``by (...)``, ``without (...)``, ``on (...)`` and the like."""
    return {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",") if label.strip()}


def legend_labels(legend: str) -> set[str]:
    """Label names a Grafana legend (``{{team}} {{status}}``) shows."""
    return set(_TEMPLATE_LEGEND.findall(legend))
