"""The signals of the status page against their thresholds (monitor/signals.py, MonitorState.readings): knowledge
gaps and their groups, adapter age and pending examples, since-when, drift read from serve, and the defaults that
must be alerts.yml's thresholds. Fed by hand with a fake clock (no broker)."""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.metrics import KNOWLEDGE_GAP_RATIO, PREFIX, MonitorMetrics
from monitor.page import index_page, status_page
from monitor.signals import ALERTS, Reading, SinceWhen, group_questions, jaccard, normalise
from monitor.state import MonitorState
from streamtune import harness
from streamtune.dlq import DeadLetter
from streamtune.exposition import DriftSource, parse_drift
from streamtune.settings import MonitorSettings

RULES = Path(__file__).resolve().parents[2] / "docker" / "prometheus" / "alerts.yml"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(clock: Clock, **settings: Any) -> MonitorState:
    return MonitorState(MonitorSettings(**settings), MonitorMetrics(), clock)


def gauge(state: MonitorState, name: str, **labels: str) -> float | None:
    state.refresh()
    value = state.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def alerts_of(state: MonitorState, tenant: str) -> dict[str, Any]:
    return {a.reading.alert + (f"/{a.reading.subject}" if a.reading.subject else ""): a for a in state.alerts()[tenant]}


def ask(state: MonitorState, tenant: str, qid: str, at: float, grounded: bool | None, **kw: Any) -> None:
    state.on_query(harness.query(tenant, qid, kw.pop("question", "What is the refund window?")), at)
    state.on_answer(harness.answer(tenant, qid, grounded=grounded, **kw), at + 0.5)


# -- knowledge gaps --------------------------------------------------------------------------------------
def test_the_gap_ratio_counts_only_answers_that_say_over_the_last_n_of_them() -> None:
    clock = Clock()
    state = make_state(clock, knowledge_gap_window=4)
    t = clock.now - 100
    state.on_answer(harness.answer("acme", "e", error="retrieval_unavailable"), t)  # an error: grounded None
    state.on_answer(harness.answer("acme", "old"), t)  # an older producer: grounded None
    assert state.figures("acme")["knowledge_gap_ratio"] is None
    assert math.isnan(gauge(state, KNOWLEDGE_GAP_RATIO, tenant="acme") or 0.0)  # NaN: nothing says, no alert
    assert "KnowledgeGaps" not in {r.alert for r in state.readings("acme")}
    for n, grounded in enumerate([False, False, True, True, True, False]):  # the window keeps the last 4
        ask(state, "acme", f"q{n}", t + n, grounded)
    assert state.figures("acme")["knowledge_gap_ratio"] == pytest.approx(1 / 4)
    assert state.figures("acme")["knowledge_gap_n"] == 4
    assert gauge(state, KNOWLEDGE_GAP_RATIO, tenant="acme") == pytest.approx(0.25)
    state.tenant("quiet")  # a tenant with no answer yet: no figure, no reading, no exception
    assert state.figures("quiet")["knowledge_gap_ratio"] is None
    assert [(r.alert, r.over) for r in state.readings("quiet")] == [("DeadLetterRate", False)]  # 0 /s, as published
    assert "quiet" not in state.alerts()


def test_ungrounded_questions_are_joined_from_queries_whichever_is_read_first_and_kept_bounded() -> None:
    clock = Clock()
    state = make_state(clock, knowledge_gap_questions=3)
    t = clock.now
    state.on_answer(harness.answer("acme", "a", grounded=False), t - 9)  # its query is read after it
    state.on_query(harness.query("acme", "a", "Do you ship to Mars?"), t - 10)
    ask(state, "acme", "b", t - 8, False, question="Can I pay in bitcoin?")
    ask(state, "acme", "c", t - 7, True, question="What is the refund window?")  # grounded: no gap
    state.on_query(harness.query("globex", "a", "Someone else's question"), t - 6)  # same id, another tenant
    assert list(state.tenants["acme"].gap_questions) == ["Do you ship to Mars?", "Can I pay in bitcoin?"]
    for n in range(3):
        ask(state, "acme", f"x{n}", t - 5 + n, False, question=f"Question {n}")
    assert list(state.tenants["acme"].gap_questions) == ["Question 0", "Question 1", "Question 2"]


def test_questions_are_grouped_by_shared_words_most_asked_first() -> None:
    assert normalise("What is the REFUND window?!") == {"refund", "window"}
    assert jaccard(normalise("refund window"), normalise("window for a refund")) == 1.0
    assert jaccard(frozenset(), frozenset()) == 1.0 and jaccard(frozenset({"a"}), frozenset()) == 0.0
    questions = [
        "Do you ship to Mars?",
        "How long is the refund window?",
        "Can I pay with bitcoin?",
        "refund window length?",
        "Do you ship to Mars?",
        "How long is the refund window?",
        "What's the refund window for gift cards?",  # {s, refund, window, gift, cards} vs {long, refund, window}
        "Is shipping to Mars possible?",  # "shipping" is not "ship": lexical, not semantic
        "Do you ship to Mars?",
    ]
    groups = group_questions(questions, similarity=0.5, limit=10)
    assert [(g.count, g.representative) for g in groups] == [
        (3, "Do you ship to Mars?"),
        (3, "How long is the refund window?"),  # with "refund window length?" (2 of 4 words shared)
        (1, "Is shipping to Mars possible?"),  # equal counts: the most recently asked first
        (1, "What's the refund window for gift cards?"),
        (1, "Can I pay with bitcoin?"),
    ]
    assert groups[1].examples == ["refund window length?"]  # the representative is not repeated
    assert len(group_questions(questions, similarity=0.5, limit=2)) == 2
    assert group_questions([], similarity=0.5, limit=3) == []


def test_the_gap_signal_is_over_since_the_answer_that_took_it_over_and_resets() -> None:
    clock = Clock()
    state = make_state(clock, knowledge_gap_window=10)
    t = clock.now - 1000
    for n in range(8):
        ask(state, "acme", f"g{n}", t + n, True)
    for n in range(3):  # 2 of 10: not over (> 0.2); 3 of 10: over, since that answer
        ask(state, "acme", f"u{n}", t + 100 + n, False)
    (alert,) = state.alerts()["acme"]
    assert alert.reading.alert == "KnowledgeGaps" and alert.reading.value == pytest.approx(0.3)
    assert alert.since == t + 102 + 0.5
    clock.now += 600  # no new record: the record time stays the since-when
    assert state.alerts()["acme"][0].since == t + 102 + 0.5
    ask(state, "acme", "back", t + 200, True)  # each pushes out the oldest, a grounded one
    ask(state, "acme", "back2", t + 201, True)
    ask(state, "acme", "back3", t + 202, True)
    assert state.figures("acme")["knowledge_gap_ratio"] == pytest.approx(0.3)  # still 3 ungrounded in the last 10
    for n in range(5):
        ask(state, "acme", f"ok{n}", t + 300 + n, True)
    assert "acme" not in state.alerts() and state.tenants["acme"].gap_over_since is None


# -- adapter age and pending examples -------------------------------------------------------------------
def test_adapter_age_and_pending_examples_follow_the_current_adapters_trained_ranges() -> None:
    clock = Clock()
    state = make_state(clock, adapter_max_age_s=3600, stale_min_pending=3)
    t = clock.now
    for offset in range(14):  # offsets 0..13 of partition 0, read before the announcement (a replay)
        example = harness.training_example("acme", offset)
        state.on_training_example(example, t - 7200 + offset, partition=0, offset=offset)
    state.on_training_example(harness.training_example("acme", 99), t - 7000, partition=1, offset=0)
    state.on_training_example(harness.training_example("acme", 12), t - 7188, partition=0, offset=12)  # delivered again
    assert state.figures("acme")["adapter_age_s"] is None  # the base model: no age
    assert state.figures("acme")["pending_examples"] == 15  # without an adapter every example waits
    assert math.isnan(gauge(state, f"{PREFIX}adapter_age_seconds", tenant="acme") or 0.0)
    # sample_manifest: trained on [0, 10) of partition 0, so 10..13 of it and partition 1's one wait
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 5000)
    assert state.tenants["acme"].current is not None
    assert state.figures("acme")["pending_examples"] == 5
    assert state.figures("acme")["adapter_age_s"] == 5000
    assert gauge(state, f"{PREFIX}adapter_age_seconds", tenant="acme") == 5000
    (alert,) = state.alerts()["acme"]
    assert (alert.reading.alert, alert.reading.subject) == ("StaleAdapter", "v0001")
    # since the later of: the adapter too old (announced + 3600), the third waiting example (t - 7200 + 12)
    assert alert.since == t - 5000 + 3600
    assert "5 examples waiting" in alert.reading.detail


def test_a_stale_adapter_needs_enough_examples_and_since_is_the_one_that_made_enough() -> None:
    clock = Clock()
    state = make_state(clock, adapter_max_age_s=60, stale_min_pending=2)
    t = clock.now
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 1000)
    state.on_training_example(harness.training_example("acme", 10), t - 500, partition=0, offset=10)
    assert "acme" not in state.alerts()  # one waits, two are needed
    state.on_training_example(harness.training_example("acme", 11), t - 400, partition=0, offset=11)
    assert state.alerts()["acme"][0].since == t - 400


# -- the other signals --------------------------------------------------------------------------------------
def test_negative_feedback_counts_versions_with_enough_ratings_that_still_answer() -> None:
    clock = Clock()
    state = make_state(clock, negative_min_ratings=4, negative_active_s=3600)
    t = clock.now
    for n in range(4):  # v1 answered long ago, 3 of 4 ratings negative: not answering lately, no alert
        state.on_answer(harness.answer("acme", f"old{n}", version="v1"), t - 7200)
        state.on_feedback(harness.rating("acme", f"old{n}", -1 if n else 1))
    for n in range(3):  # v2 answers now, but only 3 ratings
        state.on_answer(harness.answer("acme", f"new{n}", version="v2"), t - 10)
        state.on_feedback(harness.rating("acme", f"new{n}", -1))
    assert "acme" not in state.alerts()
    state.on_answer(harness.answer("acme", "new3", version="v2"), t - 5)
    state.on_feedback(harness.rating("acme", "new3", 1))
    (alert,) = state.alerts()["acme"]
    assert (alert.reading.alert, alert.reading.subject, alert.reading.value) == ("NegativeFeedback", "v2", 0.75)
    assert alert.since == t  # no record time for it: first seen over now
    old = next(r for r in state.readings("acme") if r.subject == "v1")
    assert not old.over and "not answering lately" in old.detail


def test_windowed_signals_compare_the_windows_figures_with_their_slos() -> None:
    clock = Clock()
    state = make_state(clock, window_s=100, error_ratio_slo=0.25, dlq_rate_slo=0.02)
    t = clock.now
    for n in range(4):
        state.on_answer(harness.answer("acme", f"q{n}", error="generation_failed" if n < 2 else None), t - 10)
    for n in range(3):
        state.on_dead_letter(DeadLetter(None, b'{"tenant": "acme"}', "InvalidEvent", "bad", "d", 0, n), t - 5)
    assert set(alerts_of(state, "acme")) == {"ErrorAnswers", "DeadLetterRate"}
    clock.now += 200  # the window empties: error ratio None (no reading), 0 dead letters per second
    assert "acme" not in state.alerts()


def test_since_when_is_first_seen_kept_while_over_and_forgotten_once_under() -> None:
    since = SinceWhen()
    over = Reading("acme", "FreshnessSLO", 40.0, 30.0, True, "seconds")
    under = Reading("acme", "FreshnessSLO", 10.0, 30.0, False, "seconds")
    assert since.evaluate([over], now=100.0)["acme"][0].since == 100.0
    assert since.evaluate([over], now=200.0)["acme"][0].since == 100.0
    assert since.evaluate([under], now=300.0) == {}
    assert since.evaluate([over], now=400.0)["acme"][0].since == 400.0
    assert since.evaluate([], now=450.0) == {}  # no reading (an empty window) is not over either
    told = Reading("acme", "KnowledgeGaps", 0.5, 0.2, True, "share", onset=50.0)
    assert since.evaluate([told, over], now=500.0)["acme"][0].since == 50.0  # the records' time wins


# -- drift, read from serve -------------------------------------------------------------------------------
SERVE_TEXT = """# HELP streamtune_question_drift_p_value p-value of the tenant's last drift test.
# TYPE streamtune_question_drift_p_value gauge
streamtune_question_drift_p_value{tenant="acme"} 0.002
streamtune_question_drift_p_value{tenant="globex"} 0.4
streamtune_question_drift_p_value{tenant="initech"} NaN
# TYPE streamtune_question_drift_statistic gauge
streamtune_question_drift_statistic{tenant="acme"} 0.31
# TYPE streamtune_question_drift_window gauge
streamtune_question_drift_window{tenant="acme"} 200
# TYPE streamtune_answers_total counter
streamtune_answers_total{code="ok"} 12
"""


@pytest.fixture
def serve_metrics() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = SERVE_TEXT.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()


def test_drift_is_read_from_serves_metrics_and_an_unreachable_serve_is_shown_not_raised(serve_metrics: str) -> None:
    from streamtune.exposition import read_drift

    figures = parse_drift(SERVE_TEXT)
    assert set(figures) == {"acme", "globex"}  # NaN: no test yet
    assert (figures["acme"].p_value, figures["acme"].statistic, figures["acme"].window) == (0.002, 0.31, 200)
    clock = Clock()
    state = make_state(clock)
    for tenant in ("acme", "globex"):
        state.on_answer(harness.answer(tenant, "q"), clock.now - 1)
    source = read_drift(serve_metrics, timeout_s=5)
    assert source.error is None and source.figures == figures
    state.on_drift(source)
    closed = read_drift("http://127.0.0.1:9/metrics", timeout_s=2)  # nothing listens on the discard port
    assert closed.error and not closed.figures
    state.on_drift(closed)
    (alert,) = state.alerts()["acme"]
    assert alert.reading.alert == "QuestionDrift" and alert.reading.value == 0.002
    assert "globex" not in state.alerts()
    assert [s.url for s in state.drift_unreachable()] == ["http://127.0.0.1:9/metrics"]
    assert "drift: serve metrics unreachable" in (status_page(state, "globex", with_curves=False) or "")
    assert read_drift(serve_metrics.replace("/metrics", "/nothing-here\x00"), timeout_s=2).error  # a bad URL too


# -- the page ---------------------------------------------------------------------------------------------------
def test_the_page_shows_each_signal_over_with_its_threshold_and_since_when_and_none_for_another() -> None:
    clock = Clock()
    state = make_state(clock, knowledge_gap_window=4)
    t = clock.now
    for n, question in enumerate(["Do you ship to <Mars>?", "do you ship to mars", "Refund window?"]):
        ask(state, "acme", f"q{n}", t - 3700 + n, False, question=question)
    ask(state, "globex", "q", t - 10, True)
    state.on_drift(DriftSource("http://serve:9310/metrics", t, parse_drift(SERVE_TEXT)))
    page = status_page(state, "acme", with_curves=False) or ""
    rows = re.findall(r'<tr class=alert id="alert-([^"]+)">(.*?)</tr>', page)
    assert [key for key, _ in rows] == ["KnowledgeGaps", "QuestionDrift"]  # oldest since-when first
    gaps = rows[0][1]
    assert "100.0% of the last 3 answers that say" in gaps and "&gt; 20.0%" in gaps
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(for 1 h 01 min\)", gaps), gaps
    assert "0.002" in rows[1][1] and "&lt; 0.01" in rows[1][1]
    assert "<td class=num>2</td><td>do you ship to mars</td><td>Do you ship to &lt;Mars&gt;?</td>" in page
    assert "<Mars>" not in page
    other = status_page(state, "globex", with_curves=False) or ""
    assert "<p id=alerts-none>none</p>" in other and "drift-unreachable" not in other
    index = index_page(state)
    assert "<td>KnowledgeGaps, QuestionDrift</td>" in index and "<td>none</td>" in index


# -- the page and Prometheus agree -------------------------------------------------------------------------
def _threshold(expr: str, series: str, op: str) -> float:
    found = re.search(rf"{series}\s*\)?\s*{re.escape(op)}\s*([0-9.e+-]+)", expr)
    assert found, f"no `{series} {op} <number>` in {expr!r}"
    return float(found.group(1))


def _seconds(duration: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([smhd])", duration).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def test_the_thresholds_default_to_the_alert_rules_thresholds() -> None:
    (group,) = yaml.safe_load(RULES.read_text())["groups"]
    rules = {rule["alert"]: rule["expr"] for rule in group["rules"]}
    assert set(ALERTS) == set(rules) - {"MonitorDown"}  # every tenant rule has its signal on the page
    conf = MonitorSettings()
    negative = rules["NegativeFeedback"]
    active = re.search(r"delta\(streamtune_monitor_live_answers\[(\w+)\]\)", negative)
    assert active
    assert {
        "drift_significance": _threshold(rules["QuestionDrift"], "streamtune_question_drift_p_value", "<"),
        "knowledge_gap_threshold": _threshold(rules["KnowledgeGaps"], KNOWLEDGE_GAP_RATIO, ">"),
        "negative_share_threshold": _threshold(negative, "streamtune_monitor_live_negative_share", ">"),
        "negative_min_ratings": _threshold(negative, "streamtune_monitor_live_ratings", ">="),
        "negative_active_s": _seconds(active.group(1)),
        "adapter_max_age_s": _threshold(rules["StaleAdapter"], "streamtune_monitor_adapter_age_seconds", ">"),
        "stale_min_pending": _threshold(rules["StaleAdapter"], "streamtune_pending_examples", ">="),
        "freshness_p99_slo_s": _threshold(rules["FreshnessSLO"], "streamtune_monitor_freshness_p99_seconds", ">"),
        "dlq_rate_slo": _threshold(rules["DeadLetterRate"], "streamtune_monitor_dlq_per_second", ">"),
        "error_ratio_slo": _threshold(rules["ErrorAnswers"], "streamtune_monitor_error_ratio", ">"),
    } == {name: getattr(conf, name) for name in (
        "drift_significance", "knowledge_gap_threshold", "negative_share_threshold", "negative_min_ratings",
        "negative_active_s", "adapter_max_age_s", "stale_min_pending", "freshness_p99_slo_s", "dlq_rate_slo",
        "error_ratio_slo",
    )}  # fmt: skip
