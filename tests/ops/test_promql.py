"""The metric-name extractor the dashboard and rule checks rely on."""

from __future__ import annotations

import pytest

from tests.ops.promql import metric_names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{service=~"a|b"} == 0', {"up"}),
        (
            'sum by (region, le) (rate(x_bucket{route!~"/healthz|/readyz"}[5m])) > 2',
            {"x_bucket"},
        ),
        (
            "histogram_quantile(0.95, sum by (le) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
        ),
        ('max by (a) (m{r=~"$region"})[30m:1m]', {"m"}),
        ("a / on (x) group_left (y) b", {"a", "b"}),
        ('absent(up{service="ingest"}) or absent(up{service="matching"})', {"up"}),
        ("time() - max(barman_ts) > 26 * 3600", {"barman_ts"}),
        ('sum without (pod) (rate(c_total{re="x{2}"}[1h] offset 1d))', {"c_total"}),
        ("count(g == 0) and on() vector(1)", {"g"}),
        ("label_values(passerelle_service_info, region)", {"passerelle_service_info"}),
        ("topk(5, sum by (a) (b)) unless c", {"b", "c"}),
        ("rate(x[${__range}]) * 1e3", {"x"}),
    ],
)
def test_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names
