"""Weaviate's built-in Prometheus exporter, switched on by the stack (``stack.weaviate_metrics_port``).

A Weaviate of the test's own (the same component the stack runs, on free ports) serves ``/metrics``; after
a write and a search, the series the Grafana dashboard queries (``docker/prometheus/external-metrics.yml``)
are among what it serves, and its batch counter has counted the write.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from retrieval import connect
from streamtune.harness import unique_name, wait_for
from streamtune.stack.weaviate import Weaviate

pytestmark = pytest.mark.integration

EXTERNAL_METRICS = Path(__file__).resolve().parents[2] / "docker" / "prometheus" / "external-metrics.yml"


def _samples(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def test_the_stack_lists_the_exporter_port_as_open_on_every_interface(private_weaviate: Any) -> None:
    component = Weaviate(private_weaviate.settings)
    port = private_weaviate.settings.stack.weaviate_metrics_port
    assert port in component.ports() and port in component.exposed()
    assert component.command()[1]["PROMETHEUS_MONITORING_PORT"] == str(port)


def test_the_exporter_serves_the_dashboard_series(private_weaviate: Any) -> None:
    from weaviate.classes.config import Configure, DataType, Property
    from weaviate.classes.data import DataObject

    settings = private_weaviate.settings
    port = settings.stack.weaviate_metrics_port
    name = "Metrics" + unique_name("c").replace("-", "")
    with connect(settings.weaviate) as client:
        collection = client.collections.create(
            name,
            properties=[Property(name="text", data_type=DataType.TEXT)],
            vector_config=Configure.Vectors.self_provided(),
        )
        objects = [DataObject(properties={"text": t}, vector=[1.0, float(i), 0.0]) for i, t in enumerate("abc")]
        collection.data.insert_many(objects)
        collection.query.near_vector([1.0, 0.0, 0.0], limit=1)

    listed = yaml.safe_load(EXTERNAL_METRICS.read_text())["weaviate"]

    def served() -> dict[str, list[tuple[dict[str, str], float]]] | None:
        samples = _samples(port)
        return samples if set(listed) <= set(samples) else None

    try:
        samples = wait_for(served, 60, f"the listed series on Weaviate's :{port}/metrics")
    except TimeoutError:
        have = sorted(_samples(port))
        pytest.fail(f"{EXTERNAL_METRICS.name} lists {listed}; Weaviate serves:\n  " + "\n  ".join(have))
    # The write moved Weaviate's batch counter: the exporter reports this Weaviate, live.
    written = sum(value for _, value in samples["batch_objects_processed_total"])
    assert written >= len(objects), samples["batch_objects_processed_total"]
