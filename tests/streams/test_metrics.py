"""The ingest job's counters reach Prometheus through Flink's own reporter, as the dashboard names them.

The job runs as `streamtune streams run` does (its own process, uuid-named topics, group and collection),
with the reporter on a free port (``flink.metrics_port``). A few documents (one with an e-mail address),
a deletion, a training example and two bad records go in; the reporter's ``/metrics`` must then count
them, and every Flink series that the Grafana dashboard queries (``docker/prometheus/external-metrics.yml``)
must be among what it serves. The standalone cluster's reporter ports are checked on its configuration.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
import yaml

from streamtune.contracts import encode
from streamtune.harness import (
    document_deleted,
    document_upserted,
    free_port,
    ingest_job,
    isolated_env,
    qa_recorded,
    settings_for_env,
    wait_for,
)
from streamtune.kafka import create_topics, delete_topics, producer
from streamtune.settings import Settings, load_settings
from streamtune.stack.flink_cluster import FlinkJobManager, FlinkTaskManager
from streamtune.stack.manager import components
from streamtune.topics import DOMAIN_EVENTS, topic_name

EXTERNAL_METRICS = Path(__file__).resolve().parents[2] / "docker" / "prometheus" / "external-metrics.yml"
OPERATOR = "flink_taskmanager_job_task_operator_"


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on ``127.0.0.1:port/metrics``: (name, labels) → value; empty while nothing answers."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` (each subtask reports its own) with these label values."""
    wanted = set(labels.items())
    return sum(value for (n, have), value in samples.items() if n == name and wanted <= have)


@pytest.fixture
def job(stack: Settings, tmp_path: Path) -> Iterator[Settings]:
    env = isolated_env(
        tmp_path,
        "metrics",
        STREAMTUNE__FLINK__METRICS_PORT=str(free_port()),
        STREAMTUNE__FLINK__LOCAL_REST_PORT=str(free_port()),
        STREAMTUNE__FLINK__CHECKPOINT_INTERVAL_MS="1000",
    )
    settings = settings_for_env(env)
    create_topics(settings.kafka, settings.topics)
    process = ingest_job(tmp_path, env)
    process.start()
    try:
        yield settings
    finally:
        process.stop()
        from retrieval import connect
        from retrieval.store import ChunkStore

        with connect(settings.weaviate) as client:
            ChunkStore(client, settings).drop()
        delete_topics(settings.kafka, settings.topics)


@pytest.mark.integration
@pytest.mark.slow
def test_the_job_counters_reach_prometheus(job: Settings) -> None:
    documents = [
        document_upserted(f"m-{i}", f"doc-{i}", f"Metrics document {i}: parcels leave Lisbon daily.", tenant="metrics")
        for i in range(3)
    ]
    documents.append(
        document_upserted("m-pii", "contact", "Write to dana@example.com about parcels.", tenant="metrics")
    )
    example = qa_recorded("m-qa", "When do parcels leave?", "Daily.", tenant="metrics")
    deletion = document_deleted("m-del", "doc-0", tenant="metrics")
    bad = {"bad-json": b"{not json", "bad-utf8": b"\xff\xfe"}
    out = producer(job.kafka)
    events = topic_name(DOMAIN_EVENTS, job.topics)
    for event in [*documents, example, deletion]:
        out.produce(events, key=f"metrics:{event.event_id}".encode(), value=encode(event))
    for key, value in bad.items():
        out.produce(events, key=key.encode(), value=value)
    assert out.flush(15) == 0

    expected = {
        (f"{OPERATOR}records", ()): len(documents) + 2 + len(bad),
        (f"{OPERATOR}indexed", ()): len(documents),
        (f"{OPERATOR}deleted", ()): 1,
        (f"{OPERATOR}example", ()): 1,
        (f"{OPERATOR}pii_kind_pii", (("pii_kind", "email"),)): 1,
        (f"{OPERATOR}dead_letter", ()): len(bad),
        (f"{OPERATOR}dead_letter_class_dead_letters", (("dead_letter_class", "MalformedJson"),)): 1,
        (f"{OPERATOR}dead_letter_class_dead_letters", (("dead_letter_class", "NotUtf8"),)): 1,
    }
    port = job.flink.metrics_port
    seen: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}

    def counted() -> bool:
        seen.clear()
        seen.update(scrape(port))
        return all(total(seen, name, **dict(labels)) >= count for (name, labels), count in expected.items())

    try:
        wait_for(counted, 180, f"the job's counters on :{port}/metrics")
    except TimeoutError:
        names = sorted({name for name, _ in seen if name.startswith(OPERATOR)})
        got = {f"{n}{dict(lb)}": total(seen, n, **dict(lb)) for n, lb in expected}
        pytest.fail(f"counters {got}, expected {expected}; the operator series served:\n  " + "\n  ".join(names))
    # Exactly these counts: nothing counted twice.
    assert {(n, lb): total(seen, n, **dict(lb)) for n, lb in expected} == expected

    listed = yaml.safe_load(EXTERNAL_METRICS.read_text())["flink"]
    served = {name for name, _ in seen}
    missing = sorted(set(listed) - served)
    assert not missing, f"{EXTERNAL_METRICS.name} lists series the reporter does not serve: {missing}"


def test_each_cluster_process_reports_on_its_own_port(tmp_path: Path) -> None:
    pytest.importorskip("pyflink", reason="the configuration starts from the Flink distribution's own")
    settings = load_settings(
        config_files=[],
        flink={"cluster": True, "taskmanagers": 2, "cluster_metrics_port": 19260},
        stack={"home": tmp_path},
    )
    cluster = [c for c in components(settings) if c.name.startswith("flink-") and c.name != "flink-connector"]
    ports = {}
    for component in cluster:
        component.prepare()
        config = yaml.safe_load((tmp_path / component.name / "conf" / "config.yaml").read_text())
        assert config["metrics.reporter.prom.factory.class"].endswith("PrometheusReporterFactory")
        ports[component.name] = int(config["metrics.reporter.prom.port"])
        # `stack up` refuses a taken port, and `stack status` says the reporter listens on every interface
        assert ports[component.name] in component.ports() and ports[component.name] in component.exposed()
    assert ports == {"flink-jobmanager": 19260, "flink-taskmanager-1": 19261, "flink-taskmanager-2": 19262}

    off = load_settings(config_files=[], flink={"cluster": True, "cluster_metrics_port": 0}, stack={"home": tmp_path})
    for component in components(off):
        if isinstance(component, FlinkJobManager | FlinkTaskManager):
            assert not any(key.startswith("metrics.reporter.") for key in component._config())
            assert not component.exposed() and component.ports() in ([], [off.flink.rest_port, off.flink.rpc_port])


def test_the_local_reporter_joins_the_gateway_classpath(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyflink", reason="the jar comes with the apache-flink package")
    from streams.flink import _prometheus_reporter, _reporter_jar, _reporter_on_classpath
    from streamtune.stack.flink_cluster import prometheus_reporter

    assert _prometheus_reporter(9250) == prometheus_reporter(9250)  # the local job as the cluster
    assert _prometheus_reporter(0) == prometheus_reporter(0) == {}
    jar = _reporter_jar()
    assert jar is not None and jar.is_file()
    monkeypatch.setenv("HADOOP_CLASSPATH", "/opt/hadoop/conf")
    _reporter_on_classpath(9250)
    _reporter_on_classpath(9250)  # once only, whatever was there kept
    assert os.environ["HADOOP_CLASSPATH"] == f"/opt/hadoop/conf{os.pathsep}{jar}"
