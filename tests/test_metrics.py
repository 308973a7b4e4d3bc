"""Metrics: the hottest objects' series come and go with their heat, bounded whatever the keys;
bytes received are told apart by route."""

from __future__ import annotations

from prometheus_client import generate_latest

from shim.metrics import MAX_LABEL_BYTES, Metrics, label_value


def object_series(metrics: Metrics) -> set[str]:
    """The objects with a shim_object_requests_total series."""
    text = generate_latest(metrics.registry).decode()
    return {
        line.split('object="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("shim_object_requests_total{")
    }


def test_an_object_that_cools_down_loses_its_series() -> None:
    metrics = Metrics(top_objects=2)
    for key in ("a.mar", "a.mar", "a.mar", "b.mar", "b.mar"):
        metrics.requested("models", key)
    assert object_series(metrics) == {"a.mar", "b.mar"}
    for n in range(1000):  # a flood of others, each many times more often
        for _ in range(3):
            metrics.requested("models", f"other-{n % 50}.mar")
    shown = object_series(metrics)
    assert len(shown) == 2 and not shown & {"a.mar", "b.mar"}


def test_series_stay_bounded_under_100000_distinct_objects() -> None:
    metrics = Metrics(top_objects=20)
    for n in range(100_000):
        metrics.requested("models", f"model-{n}.mar")
        metrics.answered("models", f"model-{n}.mar", "MISS")
    assert len(object_series(metrics)) == 20
    assert len(metrics.hot_objects._hot) == 80  # tracked: four per one shown
    assert metrics.registry.get_sample_value("shim_bucket_misses_total", {"bucket": "models"}) == (
        100_000
    )


def test_no_object_series_when_top_objects_is_zero() -> None:
    metrics = Metrics(top_objects=5)
    metrics.requested("models", "a.mar")
    metrics.show_top(0)
    metrics.requested("models", "b.mar")
    assert object_series(metrics) == set()
    assert "# TYPE shim_object_requests_total counter" in generate_latest(metrics.registry).decode()


def test_bytes_received_are_counted_by_route() -> None:
    metrics = Metrics()
    metrics.received("direct").inc(10)
    metrics.received("fallback").inc(5)
    metrics.received("dfdaemon").inc(7)
    sample = metrics.registry.get_sample_value
    assert (sample("shim_origin_bytes_total"), sample("shim_dfdaemon_bytes_total")) == (15, 7)


def test_dfdaemon_tasks_are_the_hottest_only() -> None:
    metrics = Metrics(top_objects=1)
    for task in ("t1", "t1", "t2"):
        metrics.dfdaemon_task(task)
    sample = metrics.registry.get_sample_value
    assert sample("shim_dfdaemon_tasks_total", {"task_id": "t1"}) == 2
    assert sample("shim_dfdaemon_tasks_total", {"task_id": "t2"}) is None


def test_long_object_keys_are_clipped_in_labels_and_stay_distinct() -> None:
    metrics = Metrics(top_objects=20)
    prefix = "é" * 600  # 1200 bytes: clipped on a character boundary
    long_keys = [prefix + "a" * (1 << 20), prefix + "b" * (1 << 20)]
    for key in [*long_keys, *long_keys, "short.mar"]:
        metrics.requested("models", key)
        metrics.answered("models", key, "HIT")
        metrics.sent("models", key, 10)
    shown = object_series(metrics)
    assert len(shown) == 3 and "short.mar" in shown
    clipped = shown - {"short.mar"}
    assert all(len(label.encode()) <= MAX_LABEL_BYTES for label in clipped)
    assert all(label.startswith("é" * 500 + "…") for label in clipped)
    assert len(generate_latest(metrics.registry)) < 20_000  # not megabytes per scrape
    hits = metrics.registry.get_sample_value(
        "shim_object_hits_total", {"bucket": "models", "object": label_value(long_keys[0])}
    )
    assert hits == 2  # the answer is counted on the request's (clipped) series
