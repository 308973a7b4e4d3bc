"""Signals of the real ``shim run``: one log line per request (JSON here), the metrics known
traffic leaves, and a Grafana dashboard that queries only series shim really exports."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.http import via_proxy
from tests.support.procs import direct_opener, free_port
from tests.support.servers import REPO_ROOT, S3Server, put_object, s3_client
from tests.support.shim_process import ShimProcess, s3_bucket_config, start_shim

DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "shim-dashboard.json"
# Labels Prometheus adds to every series it scrapes; shim does not export them.
TARGET_LABELS = {"instance", "job"}
# Grafana's range variables, which PromQL alone does not parse.
RANGE_VARIABLES = re.compile(r"\$__(rate_interval|interval|range)\b")
LARGE = 100_000  # answered on the client's connection
SMALL = 5_000  # answered as mitmproxy's response


def request_lines(shim: ShimProcess, count: int) -> list[dict[str, Any]]:
    """The JSON objects of shim's output, once ``count`` of them are request lines (the line
    is written when the answer's last byte went, which the client may see first)."""
    deadline = time.monotonic() + 10
    while True:
        entries = [json.loads(line) for line in shim.output().splitlines() if line.strip()]
        requests = [entry for entry in entries if "status" in entry]
        if len(requests) >= count or time.monotonic() > deadline:
            assert len(requests) == count, shim.output()
            return entries


@pytest.mark.slow
def test_a_miss_then_a_hit_in_json_lines_and_metrics(tmp_path: Path, s3rver: S3Server) -> None:
    put_object(s3_client(s3rver), "signals", "models/resnet.mar", b"r" * LARGE)
    config = {"log_format": "json", "buckets": [s3_bucket_config("signals", s3rver.endpoint)]}
    url = f"{s3rver.endpoint}/signals/models/resnet.mar"
    with start_shim(tmp_path, config) as shim:
        miss, hit = via_proxy(shim.proxy_port, url), via_proxy(shim.proxy_port, url)
        entries = request_lines(shim, 2)
        metrics = shim.metrics()
    assert (miss.status, hit.status, len(hit.body)) == (200, 200, LARGE)
    # Every line is one JSON object, shim's start-up line and mitmproxy's own lines too.
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in entries)
    assert any(entry["message"].startswith("shim ready") for entry in entries)
    first, second = (entry for entry in entries if "status" in entry)
    task = miss.headers["X-Shim-Task-Id"]
    common = {"method": "GET", "url": url, "bucket": "signals", "status": 200, "bytes": LARGE}
    assert {key: first[key] for key in common} == common == {key: second[key] for key in common}
    assert (first["cache"], first["route"], first["task_id"]) == ("MISS", "direct", task)
    assert (second["cache"], second["route"], second["task_id"]) == ("HIT", "cache", task)
    assert first["duration"] > 0 and second["duration"] > 0
    assert first["logger"] == "shim" and first["level"] == "INFO"
    # By bucket, by object, and by where the bytes came from.
    resnet = 'bucket="signals",object="models/resnet.mar"'
    assert metrics['shim_bucket_hits_total{bucket="signals"}'] == 1
    assert metrics['shim_bucket_misses_total{bucket="signals"}'] == 1
    assert metrics['shim_bucket_response_bytes_total{bucket="signals"}'] == 2 * LARGE
    assert metrics[f"shim_object_requests_total{{{resnet}}}"] == 2
    assert metrics[f"shim_object_hits_total{{{resnet}}}"] == 1
    assert metrics[f"shim_object_misses_total{{{resnet}}}"] == 1
    assert metrics[f"shim_object_response_bytes_total{{{resnet}}}"] == 2 * LARGE
    assert metrics["shim_origin_bytes_total"] == LARGE
    assert metrics["shim_dfdaemon_bytes_total"] == 0
    assert metrics['shim_fill_duration_seconds_count{route="direct"}'] == 1


# -- the Grafana dashboard -------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def exprs(document: dict[str, Any]) -> list[str]:
    """Every PromQL expression: the panels' targets and the query variables' label_values."""
    found = [target["expr"] for panel in document["panels"] for target in panel["targets"]]
    for variable in document["templating"]["list"]:
        if variable["type"] == "query":
            match = re.fullmatch(r"label_values\((.+), *(\w+)\)", variable["query"]["query"])
            assert match is not None, variable
            found.append(f"count by ({match.group(2)}) ({match.group(1)})")
    return found


def selectors_and_groupings(expr: str) -> tuple[list[Any], list[tuple[list[str], list[Any]]]]:
    """The vector selectors of ``expr``, and for each aggregation its grouping labels with the
    selectors it aggregates."""
    parsed = promql_parser.parse(RANGE_VARIABLES.sub("5m", expr))
    selectors: list[Any] = []
    groupings: list[tuple[list[str], list[Any]]] = []

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            selectors.append(node)
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            inner: list[Any] = []
            promql_parser.walk(
                node.expr,
                lambda n: inner.append(n) if isinstance(n, promql_parser.VectorSelector) else None,
            )
            groupings.append((list(node.modifier.labels), inner))

    promql_parser.walk(parsed, visit)
    return selectors, groupings


def test_the_dashboard_is_a_grafana_dashboard_of_prometheus_panels() -> None:
    document = dashboard()
    assert isinstance(document["schemaVersion"], int) and document["schemaVersion"] >= 36
    assert document["uid"] and document["title"]
    variables = {variable["name"]: variable for variable in document["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    for panel in document["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["type"] in {"timeseries", "stat", "table", "bargauge"}
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"] and target["expr"]
    for expr in exprs(document):
        selectors, _ = selectors_and_groupings(expr)  # a syntax error raises here
        assert selectors and all(selector.name for selector in selectors), expr


def exported(text: str) -> tuple[dict[str, set[str] | None], dict[str, set[str]]]:
    """Each sample name shim's /metrics text declares, with the label names its samples carry
    (None: a family declared without samples yet, labels unknown); and each family's names."""
    names: dict[str, set[str] | None] = {}
    families: dict[str, set[str]] = {}
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"]}
    for family in text_string_to_metric_families(text):
        families[family.name] = {family.name + suffix for suffix in suffixes.get(family.type, [""])}
        for name in families[family.name]:
            names.setdefault(name, None)
        for sample in family.samples:
            names[sample.name] = (names.get(sample.name) or set()) | set(sample.labels)
    return names, families


@pytest.mark.slow
def test_the_dashboard_queries_only_series_shim_exports(tmp_path: Path, s3rver: S3Server) -> None:
    client = s3_client(s3rver)
    put_object(client, "dashboard", "large.mar", b"l" * LARGE)
    put_object(client, "dashboard", "small.mar", b"s" * SMALL)
    bucket = {**s3_bucket_config("dashboard", s3rver.endpoint), "revalidate": "always"}
    config = {
        "buckets": [bucket],
        # A dfdaemon at a closed port: each fetch falls back to the origin, and is kept.
        "dfdaemon": {"url": f"http://127.0.0.1:{free_port()}", "keep_copy": True},
    }
    with start_shim(tmp_path, config) as shim:
        for name in ("large.mar", "large.mar", "small.mar", "small.mar", "absent.mar"):
            via_proxy(shim.proxy_port, f"{s3rver.endpoint}/dashboard/{name}")
        with direct_opener.open(f"{shim.admin}/metrics", timeout=5) as response:
            names, families = exported(response.read().decode())
    # The traffic made the series the dashboard is about.
    assert names["shim_bucket_hits_total"] == {"bucket"}
    assert names["shim_object_response_bytes_total"] == {"bucket", "object"}
    assert names["shim_fill_duration_seconds_bucket"] == {"route", "le"}
    assert names["shim_revalidations_total"] == {"result"}
    checked = set()
    for expr in exprs(dashboard()):
        selectors, groupings = selectors_and_groupings(expr)
        for selector in selectors:
            assert selector.name in names, f"{selector.name} (in {expr}) is not exported"
            known = names[selector.name]
            for matcher in selector.matchers.matchers:
                assert known is None or matcher.name in known | TARGET_LABELS, (matcher.name, expr)
            checked.add(selector.name)
        for labels, inner in groupings:
            available = set(TARGET_LABELS)
            for selector in inner:
                available |= names[selector.name] or set()
            assert set(labels) <= available or any(names[s.name] is None for s in inner), expr
    # And every family shim exports has a panel (a counter's _created time aside).
    unused = [name for name, declared in families.items() if not declared & checked]
    assert [name for name in unused if not name.endswith("_created")] == []
