"""Which metric names a PromQL expression (or a Grafana query) reads.

A small lexer, not a parser: it drops strings, label matchers (``{...}``), ranges
(``[...]``), numbers and durations, Grafana variables (``$region``,
``$__rate_interval``), label lists after ``by``/``without``/``on``/``ignoring``/
``group_left``/``group_right``, keywords, aggregations and function names; what is
left are metric names. Syntax is checked elsewhere (promtool).
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end", "atan2"}
)
AGGREGATIONS = frozenset(
    {
        "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
        "bottomk", "topk", "quantile", "limitk", "limit_ratio",
    }
)  # fmt: skip
LABEL_LIST_CLAUSES = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER = re.compile(r"[0-9.][0-9A-Za-z_.]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*[,)]")


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    i += 1
    while i < len(text) and text[i] != quote:
        i += 2 if text[i] == "\\" and quote != "`" else 1
    return i + 1


def _skip_balanced(text: str, i: int, open_: str, close: str) -> int:
    depth = 0
    while i < len(text):
        char = text[i]
        if char in "\"'`":
            i = _skip_string(text, i)
            continue
        if char == open_:
            depth += 1
        elif char == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_}{close} in: {text}")


def _next_char(text: str, i: int) -> str:
    while i < len(text) and text[i].isspace():
        i += 1
    return text[i] if i < len(text) else ""


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects."""
    templated = _LABEL_VALUES.match(expr)
    if templated:
        return {templated.group(1)}
    names: set[str] = set()
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'`":
            i = _skip_string(expr, i)
        elif char == "{":
            i = _skip_balanced(expr, i, "{", "}")
        elif char == "[":
            i = _skip_balanced(expr, i, "[", "]")
        elif char == "$":
            i += 1
            if i < len(expr) and expr[i] == "{":
                i = _skip_balanced(expr, i, "{", "}")
            else:
                match = _IDENT.match(expr, i)
                i = match.end() if match else i
        elif char.isdigit() or (char == "." and expr[i + 1 : i + 2].isdigit()):
            match = _NUMBER.match(expr, i)
            assert match is not None
            i = match.end()
        elif (match := _IDENT.match(expr, i)) is not None:
            word = match.group(0)
            i = match.end()
            following = _next_char(expr, i)
            if word in LABEL_LIST_CLAUSES:
                if following == "(":
                    i = _skip_balanced(expr, expr.index("(", i), "(", ")")
            elif word in KEYWORDS or word in AGGREGATIONS or following == "(":
                continue  # a keyword, an aggregation or a function call
            else:
                names.add(word)
        else:
            i += 1
    return names
