"""`streamtune monitor` as a real process on the real local stack: /metrics moves with the records, the status
page shows them in Debian's headless chromium (live quality of a running canary included, and the signals over
their thresholds), and the broker holds the same topics after it ran."""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from monitor.metrics import PREFIX
from streamtune import harness
from streamtune.contracts import encode
from streamtune.dlq import DeadLetter
from streamtune.harness import ServiceProcess, document_upserted, free_port, isolated_env, settings_for_env, wait_for
from streamtune.kafka import admin_client, create_topics, delete_topics, producer
from streamtune.settings import Settings
from streamtune.topics import ADAPTER_UPDATES, ANSWERS, DOMAIN_EVENTS, DOMAIN_EVENTS_DLQ, QUERIES, topic_name

pytestmark = pytest.mark.integration

TENANT = "acme"
VERSION = "v0001"
CANARY = "v0002"
REASON = "InvalidEvent: data.doc_id: <b>field required</b>"


def png(width: int = 4, height: int = 4) -> bytes:
    """A small valid grey PNG (the monitor's environment has no plotting library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def broker_topics(settings: Settings) -> set[str]:
    return set(admin_client(settings.kafka).list_topics(timeout=15).topics)


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ""
    except OSError:
        return 0, b"", ""


def series(text: str, name: str, **labels: str) -> float | None:
    """One sample of the Prometheus text, or None."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and line.split(" ")[0] != name:
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture
def deployment(stack: Settings, tmp_path: Path) -> Iterator[Any]:
    """An isolated deployment's topics (created by the test, not the monitor) and an adapter store."""
    group = f"mon-{uuid.uuid4().hex[:10]}"
    nobody = f'["http://127.0.0.1:{free_port()}/metrics"]'  # a serve that is not running: drift unreachable
    env = isolated_env(
        tmp_path, "mon", STREAMTUNE__MONITOR__PORT=str(free_port()), STREAMTUNE__MONITOR__GROUP_ID=group,
        STREAMTUNE__MONITOR__SERVE_METRICS_URLS=nobody, STREAMTUNE__MONITOR__SERVE_METRICS_INTERVAL_S="1",
    )  # fmt: skip
    settings = settings_for_env(env)
    create_topics(settings.kafka, settings.topics)
    curve = settings.adapters_dir / TENANT / VERSION / "loss.png"
    curve.parent.mkdir(parents=True)
    curve.write_bytes(png())
    yield settings, env, group
    delete_topics(settings.kafka, settings.topics)


def produce_answers(
    settings: Settings, first: int, count: int, *, version: str | None = None, arm: str | None = None
) -> None:
    """Queries ``q<first>``... and their answers; every fourth answer is an error, unless on the canary arm."""
    client = producer(settings.kafka)
    prefix = "c" if arm == "canary" else "q"
    for n in range(first, first + count):
        qid = f"{prefix}{n}"
        client.produce(topic_name(QUERIES, settings.topics), key=qid, value=encode(harness.query(TENANT, qid)))
        client.flush(15)
        error = "retrieval_unavailable" if n % 4 == 3 and arm != "canary" else None
        answer = harness.answer(TENANT, qid, version=version, error=error, arm=arm)
        client.produce(topic_name(ANSWERS, settings.topics), key=qid, value=encode(answer))
    assert client.flush(15) == 0


def produce_gaps(settings: Settings, tenant: str, questions: list[str], grounded: bool) -> None:
    """Queries with these questions, answered with (grounded) or without (not) a relevant document."""
    client = producer(settings.kafka)
    for n, question in enumerate(questions):
        qid = f"{tenant}-{n}"
        client.produce(
            topic_name(QUERIES, settings.topics), key=qid, value=encode(harness.query(tenant, qid, question))
        )
        answer = harness.answer(tenant, qid, grounded=grounded)
        client.produce(topic_name(ANSWERS, settings.topics), key=qid, value=encode(answer))
    assert client.flush(15) == 0


def alert_rows(page: str) -> dict[str, str]:
    """The status page's "Alerts" block: rule (and subject) → the row's text."""
    return dict(re.findall(r'<tr class="?alert"? id="alert-([^"]+)">(.*?)</tr>', page))


def produce_feedback(settings: Settings, events: list[Any]) -> None:
    client = producer(settings.kafka)
    for event in events:
        client.produce(topic_name(DOMAIN_EVENTS, settings.topics), key=event.key, value=encode(event))
    assert client.flush(15) == 0


def test_monitor_serves_metrics_and_a_status_page_chromium_renders_and_writes_nothing(
    deployment: Any, tmp_path: Path
) -> None:
    settings, env, group = deployment
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (`make env-monitor` installs it: apt-get install chromium)"
    ours = lambda: {t for t in broker_topics(settings) if t.startswith((settings.topics.prefix, group))}  # noqa: E731
    before = ours()
    base = f"http://127.0.0.1:{settings.monitor.port}"

    monitor = ServiceProcess(["monitor"], b"monitor: ready", tmp_path / "logs", env, python=sys.executable)
    monitor.start(timeout_s=120)
    try:
        client = producer(settings.kafka)
        update = harness.adapter_update(TENANT, VERSION)
        client.produce(topic_name(ADAPTER_UPDATES, settings.topics), key=TENANT, value=encode(update))
        canary = harness.adapter_update(TENANT, CANARY, state="canary", canary_percent=25)
        client.produce(topic_name(ADAPTER_UPDATES, settings.topics), key=TENANT, value=encode(canary))
        for n in range(3):
            source = topic_name(DOMAIN_EVENTS, settings.topics)
            value = b'{"tenant": "acme", "type": "document.upserted"}'
            bad = DeadLetter(b"acme:doc-x", value, "InvalidEvent", REASON.split(": ", 1)[1], source, 0, n)
            client.produce(topic_name(DOMAIN_EVENTS_DLQ, settings.topics), key=bad.key, value=bad.value,
                           headers=list(bad.headers().items()))  # fmt: skip
        client.produce(topic_name(ANSWERS, settings.topics), key=b"garbage", value=b"{not json")  # skipped, counted
        assert client.flush(15) == 0
        produce_answers(settings, 0, 8, version=VERSION, arm="incumbent")

        def metrics_show(answers: int) -> str | None:
            status, body, _ = get(f"{base}/metrics")
            text = body.decode()
            done = status == 200 and series(text, f"{PREFIX}answers_total", tenant=TENANT) == answers
            return text if done and series(text, f"{PREFIX}dlq_total", tenant=TENANT) == 3 else None

        text = wait_for(lambda: metrics_show(8), 90, "the monitor's /metrics counting 8 answers and 3 dead letters")
        assert series(text, f"{PREFIX}errors_total", tenant=TENANT, code="retrieval_unavailable") == 2
        assert series(text, f"{PREFIX}answer_latency_seconds_count", tenant=TENANT) == 8
        assert series(text, f"{PREFIX}current_adapter", tenant=TENANT, version=VERSION) == 1
        answers = topic_name(ANSWERS, settings.topics)
        assert series(text, f"{PREFIX}skipped_total", topic=answers, error_class="MalformedJson") == 1
        assert series(text, f"{PREFIX}promotion_to_first_answer_seconds_count", tenant=TENANT) == 1
        assert (series(text, f"{PREFIX}answer_latency_p99_seconds", tenant=TENANT) or -1) >= 0

        # the series move while records keep coming
        produce_answers(settings, 8, 4, version=VERSION, arm="incumbent")
        wait_for(lambda: metrics_show(12), 90, "the monitor's /metrics counting 12 answers")

        # live quality: ratings on domain-events joined to the answers of each arm; the rest counted and ignored
        produce_answers(settings, 0, 4, version=CANARY, arm="canary")
        produce_feedback(settings, [
            harness.rating(TENANT, "q0", 1), harness.rating(TENANT, "q1", -1, correction="60 days"),
            harness.rating(TENANT, "q2", 1), harness.rating(TENANT, "c0", -1), harness.rating(TENANT, "c1", -1),
            harness.rating(TENANT, "c0", 1),  # rated twice
            harness.rating("globex", "q4", -1),  # another tenant's answer
            harness.rating(TENANT, "q3", 1),  # an error answer: never joined, it waits
            harness.rating(TENANT, "nowhere", 1),  # no such answer
        ])  # fmt: skip

        def live_quality_shows() -> str | None:
            status, body, _ = get(f"{base}/metrics")
            text = body.decode()
            live = f"{PREFIX}live_ratings"
            figures = (
                series(text, f"{PREFIX}live_answers", tenant=TENANT, version=VERSION, arm="incumbent"),
                series(text, f"{PREFIX}live_answers", tenant=TENANT, version=CANARY, arm="canary"),
                series(text, live, tenant=TENANT, version=VERSION, arm="incumbent", rating="positive"),
                series(text, live, tenant=TENANT, version=VERSION, arm="incumbent", rating="negative"),
                series(text, live, tenant=TENANT, version=CANARY, arm="canary", rating="negative"),
                series(text, f"{PREFIX}feedback_ignored", tenant=TENANT, reason="duplicate"),
                series(text, f"{PREFIX}feedback_ignored", tenant="globex", reason="other_tenant"),
                series(text, f"{PREFIX}feedback_unknown", tenant=TENANT),
            )
            return text if status == 200 and figures == (9, 4, 2, 1, 2, 1, 1, 2) else None

        text = wait_for(live_quality_shows, 90, "the monitor's /metrics joining 5 ratings and ignoring 2")
        # knowledge gaps: initech's questions find no document; globex's do (its only other record: a rating)
        gaps = ["Do you ship to Mars?", "do you ship to mars", "Can I pay in bitcoin?"]
        produce_gaps(settings, "initech", gaps, grounded=False)
        produce_gaps(settings, "globex", ["What is the refund window?"], grounded=True)

        def gaps_show() -> str | None:
            _, body, _ = get(f"{base}/metrics")
            text = body.decode()
            done = series(text, "streamtune_knowledge_gap_ratio", tenant="initech") == 1.0
            return text if done and series(text, "streamtune_knowledge_gap_ratio", tenant="globex") == 0.0 else None

        text = wait_for(gaps_show, 90, "the monitor's /metrics counting initech's 3 ungrounded answers")
        assert 0 <= (series(text, f"{PREFIX}adapter_age_seconds", tenant=TENANT) or -1) < 300
        assert series(text, f"{PREFIX}live_corrections", tenant=TENANT, version=VERSION) == 1
        assert series(text, f"{PREFIX}live_negative_share", tenant=TENANT, version=CANARY) == 1.0
        assert series(text, f"{PREFIX}canary_percent", tenant=TENANT, version=CANARY) == 25
        assert series(text, f"{PREFIX}current_adapter", tenant=TENANT, version=CANARY) is None

        status, body, kind = get(f"{base}/status/{TENANT}/loss/{VERSION}.png")
        assert status == 200 and kind == "image/png" and body == png()
        assert get(f"{base}/status/{TENANT}/loss/..%2F..%2Fetc.png")[0] == 404

        dom = subprocess.run(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", f"{base}/status/{TENANT}"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert re.search(rf"<span id=\"tenant\">{TENANT}</span>", dom), dom[:2000]
        assert re.search(rf'id="current-adapter">{VERSION}<', dom)
        assert "&lt;b&gt;field required&lt;/b&gt;" in dom and "<b>field required</b>" not in dom
        p50 = re.search(r'id="latency-p50">([^<]+)<', dom)
        p99 = re.search(r'id="latency-p99">([^<]+)<', dom)
        assert p50 and p99 and re.fullmatch(r"\d+ ms|\d+\.\d\d s", p50.group(1)) and p99.group(1) != "—"
        assert "18.8%" in dom  # 3 error answers of 16
        row = re.search(rf'<tr id="live-{VERSION}">(.*?)</tr>', dom)
        assert row and re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))[1:] == [
            "<b>current</b>", "9", "3", "2", "1", "33.3%", "1",
        ]  # fmt: skip
        assert re.search(rf'<tr id="live-{CANARY}"><td>{CANARY}</td><td><b>canary 25%</b></td>', dom)
        assert re.search(r'id="canary-served">4<', dom) and re.search(r'id="incumbent-served">9<', dom)
        assert re.search(r'id="canary-negative-share">100.0%<', dom)
        assert re.search(r'id="ignored-duplicate">1<', dom) and re.search(r'id="ratings-waiting">2<', dom)
        # the alerts block: 3 error answers of 16 are over the 5 % SLO; serve's drift is unreachable, not an alert
        assert list(alert_rows(dom)) == ["ErrorAnswers"], dom[dom.find("<h2>Alerts") :][:2000]
        assert "18.8%" in alert_rows(dom)["ErrorAnswers"] and "&gt; 5.0%" in alert_rows(dom)["ErrorAnswers"]
        assert "drift: serve metrics unreachable" in dom
        calm = subprocess.run(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", f"{base}/status/globex"],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        assert re.search(r'<p id="alerts-none">none</p>', calm) and not alert_rows(calm), calm[:3000]

        def gap_page() -> str | None:
            status, body, _ = get(f"{base}/status/initech")
            page = body.decode()
            return page if status == 200 and "KnowledgeGaps" in alert_rows(page) else None

        gap_row = alert_rows(wait_for(gap_page, 30, "initech's page showing its knowledge gaps"))["KnowledgeGaps"]
        assert "100.0% of the last 3 answers that say" in gap_row and "&gt; 20.0%" in gap_row
        page = gap_page() or ""
        # grouped: which wording represents the group depends on the order the partitions were read in
        grouped = re.search(r"<tr class=gap-group><td class=num>2</td><td>([^<]*)</td><td>([^<]*)</td></tr>", page)
        assert grouped and set(grouped.groups()) == {"Do you ship to Mars?", "do you ship to mars"}, page
        since = re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", gap_row)
        assert since, gap_row

        shot = tmp_path / "status.png"
        subprocess.run(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--window-size=1200,1100",
             f"--screenshot={shot}", f"{base}/status/{TENANT}"],
            capture_output=True, timeout=120, check=True,
        )  # fmt: skip
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000

        # nothing lives only in memory: a monitor started anew rebuilds the same live quality from the topics
        monitor.stop()
        assert "Traceback" not in monitor.output()
        monitor = ServiceProcess(["monitor"], b"monitor: ready", tmp_path / "logs-2", env, python=sys.executable)
        monitor.start(timeout_s=120)
        wait_for(live_quality_shows, 90, "the restarted monitor joining the same 5 ratings and ignoring the same 2")
        # the since-when of a signal the records date is the same after the replay
        again = alert_rows(wait_for(gap_page, 30, "the restarted monitor showing initech's knowledge gaps"))
        assert since.group(0) in again["KnowledgeGaps"], again
    finally:
        monitor.stop()
    assert ours() == before, "the monitor created or deleted topics"
    assert "Traceback" not in monitor.output()


def test_freshness_is_read_from_weaviate_for_the_events_own_chunk(deployment: Any, tmp_path: Path) -> None:
    """The chunk is written here as the ingest job writes it (the job itself is not the subject)."""
    from retrieval.client import connect
    from retrieval.store import ChunkStore, DocumentChunks

    settings, env, _ = deployment
    base = f"http://127.0.0.1:{settings.monitor.port}"
    monitor = ServiceProcess(["monitor"], b"monitor: ready", tmp_path / "logs", env, python=sys.executable)
    monitor.start(timeout_s=120)
    client = connect(settings.weaviate)
    store = ChunkStore(client, settings)
    try:
        event = document_upserted("evt-fresh", "doc-fresh", "Refunds within 30 days.", tenant=TENANT)
        kafka = producer(settings.kafka)
        kafka.produce(topic_name(DOMAIN_EVENTS, settings.topics), key=event.key, value=encode(event))
        assert kafka.flush(15) == 0
        store.ensure_collection(4)
        written = DocumentChunks(TENANT, "doc-fresh", "", ["Refunds within 30 days."], [[0.1, 0.2, 0.3, 0.4]],
                                 event.event_id, datetime.now(UTC).isoformat())  # fmt: skip
        store.upsert([written])

        def fresh() -> float | None:
            status, body, _ = get(f"{base}/metrics")
            count = series(body.decode(), f"{PREFIX}freshness_seconds_count", tenant=TENANT)
            return count if status == 200 and count == 1 else None

        wait_for(fresh, 90, "the monitor measuring the document's event → searchable")
        _, body, _ = get(f"{base}/metrics")
        assert (series(body.decode(), f"{PREFIX}freshness_p50_seconds", tenant=TENANT) or -1) >= 0
    finally:
        monitor.stop()
        store.drop()
        client.close()


def test_without_its_topics_the_monitor_stops_naming_them_and_creates_none(stack: Settings, tmp_path: Path) -> None:
    env = isolated_env(tmp_path, "mon", STREAMTUNE__MONITOR__PORT=str(free_port()))
    settings = settings_for_env(env)
    done = subprocess.run(
        [sys.executable, "-m", "streamtune", "monitor"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 78, done.stderr
    assert topic_name(QUERIES, settings.topics) in done.stderr and "streamtune topics create" in done.stderr
    assert not {t for t in broker_topics(settings) if t.startswith(settings.topics.prefix)}
