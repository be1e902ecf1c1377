"""The monitor's windows, joins and figures, fed records by hand with a fake clock (no broker)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from monitor.metrics import KNOWLEDGE_GAP_RATIO, NAMES, PREFIX, MonitorMetrics
from monitor.page import index_page, loss_curve_file, status_page, stored_versions
from monitor.state import UNKNOWN_TENANT, MonitorState, Window, letter_tenant, percentile
from streamtune import harness
from streamtune.dlq import DeadLetter
from streamtune.harness import document_upserted
from streamtune.settings import MonitorSettings


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_state(clock: Clock, **settings: Any) -> MonitorState:
    return MonitorState(MonitorSettings(**settings), MonitorMetrics(), clock)


def sample(state: MonitorState, name: str, **labels: str) -> float | None:
    value = state.metrics.registry.get_sample_value(name, labels)
    return None if value is None else float(value)


def letter(value: bytes, key: bytes | None = None, message: str = "bad", offset: int = 0) -> DeadLetter:
    return DeadLetter(key, value, "InvalidEvent", message, "domain-events", 0, offset)


def test_percentile_is_nearest_rank_and_empty_is_none() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match="quantile"):
        percentile(values, 0)


def test_a_window_keeps_only_the_last_span_even_out_of_order() -> None:
    window = Window(60)
    window.add(100.0, 1.0)
    window.add(200.0, 3.0)
    window.add(150.0, 2.0)  # read late
    assert sorted(window.values(now=200.0)) == [2.0, 3.0]
    assert window.values(now=255.0) == [3.0]
    assert window.values(now=300.0) == []


def test_latency_joins_query_and_answer_in_either_order() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    state.on_query(harness.query("acme", "q1"), t - 10)
    state.on_answer(harness.answer("acme", "q1"), t - 9.5)  # 0.5 s
    state.on_answer(harness.answer("acme", "q2"), t - 5)  # answer read before its query: 2 s
    state.on_query(harness.query("acme", "q2"), t - 7)
    state.on_answer(harness.answer("acme", "q3"), t - 1)  # its query is never read: no latency
    figures = state.figures("acme")
    assert figures["latency_n"] == 2
    assert figures["latency_p50_s"] == pytest.approx(0.5)
    assert figures["latency_p99_s"] == pytest.approx(2.0)
    assert sample(state, f"{PREFIX}answer_latency_seconds_count", tenant="acme") == 2
    assert sample(state, f"{PREFIX}answers_total", tenant="acme") == 3
    assert sample(state, f"{PREFIX}queries_total", tenant="acme") == 2


def test_error_ratio_and_dlq_rate_cover_the_window_only() -> None:
    clock = Clock()
    state = make_state(clock, window_s=60)
    t = clock.now
    state.on_answer(harness.answer("acme", "old", error="retrieval_unavailable"), t - 600)  # outside the window
    state.on_answer(harness.answer("acme", "a"), t - 10)
    state.on_answer(harness.answer("acme", "b"), t - 9)
    state.on_answer(harness.answer("acme", "c"), t - 8)
    state.on_answer(harness.answer("acme", "d", error="question_too_long"), t - 7)
    for offset in range(3):
        state.on_dead_letter(letter(b'{"tenant": "acme"}', offset=offset), t - 5)
    state.on_dead_letter(letter(b'{"tenant": "acme"}'), t - 3600)
    figures = state.figures("acme")
    assert figures["error_ratio"] == pytest.approx(0.25)
    assert figures["dlq_per_s"] == pytest.approx(3 / 60)
    assert sample(state, f"{PREFIX}errors_total", tenant="acme", code="question_too_long") == 1
    assert sample(state, f"{PREFIX}errors_total", tenant="acme", code="retrieval_unavailable") == 1
    assert sample(state, f"{PREFIX}dlq_total", tenant="acme", error_class="InvalidEvent") == 4
    state.refresh()
    assert sample(state, f"{PREFIX}error_ratio", tenant="acme") == pytest.approx(0.25)


def test_an_empty_window_publishes_nan_not_zero() -> None:
    clock = Clock()
    state = make_state(clock, window_s=60)
    state.on_answer(harness.answer("acme", "a"), clock.now - 600)
    state.refresh()
    assert math.isnan(sample(state, f"{PREFIX}answer_latency_p99_seconds", tenant="acme") or 0.0)
    assert math.isnan(sample(state, f"{PREFIX}error_ratio", tenant="acme") or 0.0)


def test_a_dead_letter_is_counted_for_the_tenant_its_value_or_key_names() -> None:
    assert letter_tenant(letter(b'{"tenant": "acme", "type": "nope"}')) == "acme"
    assert letter_tenant(letter(b"not json", key=b"globex:doc-1")) == "globex"
    assert letter_tenant(letter(b'{"tenant": "bad tenant!"}', key=b"evt-1")) == UNKNOWN_TENANT
    assert letter_tenant(letter(b"\xff\xfe", key=None)) == UNKNOWN_TENANT


def test_promotion_to_first_answer_whichever_is_read_first() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 100)
    state.on_answer(harness.answer("acme", "q0", version="v0001"), t - 90)  # 10 s
    state.on_answer(harness.answer("acme", "q1", version="v0001"), t - 80)
    # replay: the answers with v0002 are read before its announcement
    state.on_answer(harness.answer("acme", "q2", version="v0002"), t - 40)
    state.on_answer(harness.answer("acme", "q3", version="v0002", error="generation_failed"), t - 49)  # an error
    state.on_adapter_update(harness.adapter_update("acme", "v0002"), t - 50)  # 10 s again
    history = state.tenants["acme"].adapters
    assert [(r.version, r.to_first_answer_s) for r in history] == [("v0001", 10.0), ("v0002", 10.0)]
    assert state.figures("acme")["promotion_to_first_answer_s"] == 10.0
    assert sample(state, f"{PREFIX}promotion_to_first_answer_seconds_count", tenant="acme") == 2
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0002") == 1
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0001") is None
    assert sample(state, f"{PREFIX}adapter_updates_total", tenant="acme", verdict="promoted") == 2


def test_freshness_waits_for_the_events_own_chunks() -> None:
    clock = Clock()
    state = make_state(clock, freshness_give_up_s=300)
    t = clock.now
    event = document_upserted("e1", "doc-1", "text", tenant="acme")
    state.on_document(event, t - 20, partition=0, offset=5)
    (pending,) = state.due_documents(limit=10)
    state.on_indexed(pending, t - 17.5)
    assert state.figures("acme")["freshness_p50_s"] == pytest.approx(2.5)
    assert state.due_documents(limit=10) == []
    # a newer event of the same document supersedes the one being looked up
    state.on_document(document_upserted("e2", "doc-1", "text", tenant="acme"), t - 10, partition=0, offset=6)
    (old,) = state.due_documents(limit=10)
    state.on_document(document_upserted("e3", "doc-1", "text", tenant="acme"), t - 9, partition=0, offset=7)
    state.on_indexed(old, t - 8)
    assert state.figures("acme")["freshness_n"] == 1
    # a document whose event went to the DLQ is not waited for; one never indexed becomes overdue
    state.on_dead_letter(DeadLetter(b"acme:doc-1", b"{}", "InvalidEvent", "x", "domain-events", 0, 7), t)
    state.on_document(document_upserted("e4", "doc-2", "text", tenant="acme"), t - 400, partition=1, offset=0)
    assert state.due_documents(limit=10) == []
    assert sample(state, f"{PREFIX}freshness_overdue_total", tenant="acme") == 1


def test_due_documents_are_rate_limited_and_rotated() -> None:
    clock = Clock()
    state = make_state(clock)
    for n in range(5):
        state.on_document(document_upserted(f"e{n}", f"d{n}", "t"), clock.now - 1, partition=0, offset=n)
    first = [p.doc_id for p in state.due_documents(limit=2)]
    second = [p.doc_id for p in state.due_documents(limit=2)]
    assert first == ["d0", "d1"] and second == ["d2", "d3"]


def test_pending_joins_are_bounded() -> None:
    clock = Clock()
    state = make_state(clock, max_pending=3)
    for n in range(10):
        state.on_query(harness.query("acme", f"q{n}"), clock.now)
    assert len(state._queries) == 3
    state.on_answer(harness.answer("acme", "q0"), clock.now)  # forgotten: no latency
    state.on_answer(harness.answer("acme", "q9"), clock.now)
    assert state.figures("acme")["latency_n"] == 1


def test_every_declared_name_is_a_published_series_and_the_other_way_round() -> None:
    metrics = MonitorMetrics()
    published = {family.name for family in metrics.registry.collect()}
    # prometheus_client names a counter family without its _total suffix
    declared = {name.removesuffix("_total") for name in NAMES}
    assert published == declared
    # one exception, named so by the alert rules (docker/prometheus/alerts.yml)
    assert all(name.startswith(PREFIX) for name in NAMES if name != KNOWLEDGE_GAP_RATIO)
    assert generate_latest(metrics.registry)  # renders


def test_the_page_escapes_user_data_and_shows_the_figures() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    state.on_adapter_update(harness.adapter_update("acme", "v0001", gate={"reason": "<b>won</b>"}), t - 30)
    state.on_query(harness.query("acme", "q1"), t - 3)
    state.on_answer(harness.answer("acme", "q1", version="v0001"), t - 2)
    state.on_dead_letter(letter(b'{"tenant": "acme"}', message="<script>alert(1)</script> & more"), t - 1)
    page = status_page(state, "acme", with_curves=True) or ""
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page
    assert "&lt;b&gt;won&lt;/b&gt;" in page
    assert "id=current-adapter>v0001<" in page
    assert "1.00 s" in page  # latency p50 of the one answer
    assert "/status/acme/loss/v0001.png" in page
    assert status_page(state, "nobody", with_curves=False) is None
    assert 'href="/status/acme"' in index_page(state)


def test_loss_curves_are_served_only_from_inside_the_adapter_store(tmp_path: Path) -> None:
    store = tmp_path / "adapters"
    (store / "acme" / "v0001").mkdir(parents=True)
    (store / "acme" / "v0001" / "loss.png").write_bytes(b"\x89PNG")
    outside = tmp_path / "secret"
    outside.mkdir()
    (outside / "loss.png").write_bytes(b"secret")
    (store / "acme" / "v0002").symlink_to(outside)
    assert loss_curve_file(store, "acme", "v0001") == (store / "acme" / "v0001" / "loss.png").resolve()
    assert loss_curve_file(store, "acme", "v0002") is None  # a link out of the store
    assert loss_curve_file(store, "acme", "..") is None
    assert loss_curve_file(store, "..", "secret") is None
    assert loss_curve_file(store, "acme", "v0003") is None


def test_versions_the_gate_rejected_are_read_from_the_adapter_store(tmp_path: Path) -> None:
    clock = Clock()
    state = make_state(clock)
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), clock.now - 60)
    for version, promoted in (("v0001", True), ("v0002", False)):
        folder = tmp_path / "acme" / version
        folder.mkdir(parents=True)
        manifest = harness.sample_manifest("acme", version, gate={"promoted": promoted, "reason": f"why {version}"})
        (folder / "manifest.json").write_text(manifest.to_json())
    (tmp_path / "acme" / "v0003").mkdir()  # no manifest (yet): skipped
    (tmp_path / "acme" / "v0003" / "manifest.json").write_text("{")
    stored = stored_versions(tmp_path, "acme")
    assert [m.version for m in stored] == ["v0001", "v0002"]
    page = status_page(state, "acme", with_curves=True, stored=stored) or ""
    never_announced = page.split("never announced", 1)[1]
    assert "v0002" in never_announced and "rejected" in never_announced and "why v0002" in never_announced
    assert "v0001" not in never_announced.split("Last dead letters")[0]
    assert stored_versions(tmp_path, "../etc") == [] and stored_versions(tmp_path, "nobody") == []


# -- live quality and the rollout -----------------------------------------------------------------


def live_row(page: str, version: str) -> list[str]:
    """The cells of ``version``'s row of the page's live-quality table."""
    match = re.search(rf'<tr id="live-{re.escape(version)}">(.*?)</tr>', page)
    assert match, f"no live-quality row for {version}"
    return re.findall(r"<td[^>]*>(.*?)</td>", match.group(1))


def test_ratings_join_their_answers_per_version_and_arm_and_the_rest_is_counted_and_ignored() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 100)
    state.on_adapter_update(harness.adapter_update("acme", "v0002", state="canary", canary_percent=20), t - 90)
    served = [
        harness.answer("acme", "q1", version="v0001", arm="incumbent"),
        harness.answer("acme", "q2", version="v0001", arm="incumbent"),
        harness.answer("acme", "q3", version="v0002", arm="canary"),
        harness.answer("acme", "q4", version="v0002", arm="canary"),
        harness.answer("acme", "q5", version="v0001"),  # pinned: outside the canary
        harness.answer("acme", "q1", version="v0001", arm="incumbent"),  # the same answer read twice
        harness.answer("acme", "q6", version="v0001", arm="incumbent", error="generation_failed"),
        harness.answer("globex", "g1", version="v0009"),
    ]
    for n, answer in enumerate(served):
        state.on_answer(answer, t - 80 + n)
    ratings = [
        harness.rating("acme", "q1", 1),
        harness.rating("acme", "q2", -1, correction="60 days"),
        harness.rating("acme", "q3", -1, correction="45 days"),
        harness.rating("acme", "q4", 1),
        harness.rating("acme", "q5", -1),
        harness.rating("acme", "q3", 1),  # rated twice: the first rating stands
        harness.rating("acme", "g1", -1),  # another tenant's answer
        harness.rating("acme", "nowhere", 1),  # no such answer (yet)
        harness.rating("acme", "q6", 1),  # an error answer is no served answer: never joined
    ]
    for rating in ratings:
        state.on_feedback(rating)

    (current, canary) = state.live("acme")
    assert (current.version, current.role, canary.version, canary.role) == ("v0001", "current", "v0002", "canary")
    assert current.figures.as_dict() == {"served": 3, "rated": 3, "positive": 1, "negative": 2, "corrections": 1}
    assert canary.figures.as_dict() == {"served": 2, "rated": 2, "positive": 1, "negative": 1, "corrections": 1}
    arms = state.arms("acme")
    assert arms is not None
    assert (arms[0].served, arms[0].rated, arms[1].served, arms[1].rated) == (2, 2, 2, 2)
    assert state.quality.versions("globex")["v0009"].rated == 0  # acme cannot move globex's figures
    joined = sum(live.figures.rated for live in state.live("acme"))
    ignored = sum(n for (tenant, _), n in state.quality.ignored.items() if tenant == "acme")
    assert joined + ignored + state.quality.unknown("acme") == len(ratings)  # every rating has one outcome

    state.refresh()
    gauge = f"{PREFIX}live_answers"
    assert sample(state, gauge, tenant="acme", version="v0001", arm="incumbent") == 2
    assert sample(state, gauge, tenant="acme", version="v0001", arm="none") == 1
    assert sample(state, gauge, tenant="acme", version="v0002", arm="canary") == 2
    ratings_gauge = f"{PREFIX}live_ratings"
    assert sample(state, ratings_gauge, tenant="acme", version="v0001", arm="incumbent", rating="positive") == 1
    assert sample(state, ratings_gauge, tenant="acme", version="v0001", arm="incumbent", rating="negative") == 1
    assert sample(state, ratings_gauge, tenant="acme", version="v0001", arm="none", rating="negative") == 1
    assert sample(state, ratings_gauge, tenant="acme", version="v0002", arm="canary", rating="negative") == 1
    assert sample(state, f"{PREFIX}live_corrections", tenant="acme", version="v0002") == 1
    assert sample(state, f"{PREFIX}live_negative_share", tenant="acme", version="v0001") == pytest.approx(2 / 3)
    assert math.isnan(sample(state, f"{PREFIX}live_negative_share", tenant="globex", version="v0009") or 0.0)
    ignored_gauge = f"{PREFIX}feedback_ignored"
    assert sample(state, ignored_gauge, tenant="acme", reason="duplicate") == 1
    assert sample(state, ignored_gauge, tenant="acme", reason="other_tenant") == 1
    assert sample(state, ignored_gauge, tenant="acme", reason="unknown_query") == 0
    assert sample(state, ignored_gauge, tenant="globex", reason="other_tenant") == 0
    assert sample(state, f"{PREFIX}feedback_unknown", tenant="acme") == 2  # "nowhere" and the error answer's
    assert sample(state, f"{PREFIX}canary_percent", tenant="acme", version="v0002") == 20


def test_a_rating_read_before_its_answer_waits_for_it() -> None:
    state = make_state(Clock())
    state.on_feedback(harness.rating("acme", "q1", -1))
    state.refresh()
    assert sample(state, f"{PREFIX}feedback_unknown", tenant="acme") == 1
    state.on_answer(harness.answer("acme", "q1"), Clock().now)  # the base model's
    state.refresh()
    assert sample(state, f"{PREFIX}feedback_unknown", tenant="acme") == 0
    assert sample(state, f"{PREFIX}live_ratings", tenant="acme", version="base", arm="none", rating="negative") == 1
    (base,) = state.live("acme")
    assert (base.version, base.role, base.figures.rated) == ("base", "current", 1)


def test_the_rollout_is_folded_and_a_rolled_back_version_is_never_shown_current() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    acme = state.tenant("acme")
    promotions = f"{PREFIX}promotion_to_first_answer_seconds_count"
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 100)  # from before canaries
    state.on_answer(harness.answer("acme", "a1", version="v0001"), t - 90)  # 10 s
    state.on_adapter_update(harness.adapter_update("acme", "v0002", state="canary", canary_percent=20), t - 80)
    state.on_answer(harness.answer("acme", "a2", version="v0001", arm="incumbent"), t - 78)
    state.on_answer(harness.answer("acme", "a3", version="v0002", arm="canary"), t - 75)  # 5 s to the canary's
    assert acme.current is not None and acme.current.version == "v0001"
    assert acme.canary is not None and acme.canary.version == "v0002" and acme.canary.to_first_answer_s == 5.0
    assert sample(state, promotions, tenant="acme") == 1  # a canary's first answer is no promotion's
    state.refresh()
    assert sample(state, f"{PREFIX}canary_percent", tenant="acme", version="v0002") == 20

    state.on_adapter_update(harness.adapter_update("acme", "v0002", state="rolled_back"), t - 60)
    assert (acme.rollout.current, acme.rollout.canary) == ("v0001", None)
    assert acme.current is not None and acme.current.version == "v0001" and acme.canary is None
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0001") == 1
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0002") is None
    state.refresh()
    assert sample(state, f"{PREFIX}canary_percent", tenant="acme", version="v0002") is None
    page = status_page(state, "acme", with_curves=False) or ""
    assert "id=current-adapter>v0001<" in page and "rolled back" in page and "<h3>Canary on trial" not in page
    assert live_row(page, "v0002")[1] == "earlier"

    # a canary promoted: its answers on the canary arm after the promotion (serve not caught up) are not the
    # first answers as the current version
    state.on_adapter_update(harness.adapter_update("acme", "v0003", state="canary", canary_percent=50), t - 50)
    state.on_adapter_update(harness.adapter_update("acme", "v0003", state="current"), t - 40)
    state.on_answer(harness.answer("acme", "a4", version="v0003", arm="canary"), t - 39)
    state.on_answer(harness.answer("acme", "a5", version="v0003"), t - 30)
    assert acme.current is not None and acme.current.version == "v0003" and acme.current.to_first_answer_s == 10.0
    assert [r.to_first_answer_s for r in acme.adapters if r.version == "v0003"] == [11.0, 10.0]
    assert sample(state, promotions, tenant="acme") == 2

    # the current version rolled back: it stays current until the version current again is announced
    state.on_adapter_update(harness.adapter_update("acme", "v0003", state="rolled_back"), t - 20)
    assert acme.current is not None and acme.current.version == "v0003"
    state.on_adapter_update(harness.adapter_update("acme", "v0001", state="current"), t - 19)
    assert acme.current is not None and acme.current.version == "v0001" and acme.current.first_answer_at is None
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0001") == 1
    assert sample(state, f"{PREFIX}current_adapter", tenant="acme", version="v0003") is None
    assert [(r.version, r.state) for r in acme.adapters] == [
        ("v0001", "current"),
        ("v0002", "canary"),
        ("v0002", "rolled_back"),
        ("v0003", "canary"),
        ("v0003", "current"),
        ("v0003", "rolled_back"),
        ("v0001", "current"),
    ]
    assert [live.version for live in state.live("acme")] == ["v0001", "v0003", "v0002"]


def test_the_page_shows_live_quality_per_version_and_the_arms_side_by_side() -> None:
    clock = Clock()
    state = make_state(clock)
    t = clock.now
    state.on_adapter_update(harness.adapter_update("acme", "v0001"), t - 100)
    state.on_adapter_update(harness.adapter_update("acme", "v0002", state="canary", canary_percent=25), t - 90)
    for n in range(6):
        state.on_answer(harness.answer("acme", f"i{n}", version="v0001", arm="incumbent"), t - 50)
        state.on_feedback(harness.rating("acme", f"i{n}", 1 if n < 5 else -1))
    for n in range(2):
        state.on_answer(harness.answer("acme", f"c{n}", version="v0002", arm="canary"), t - 50)
        state.on_feedback(harness.rating("acme", f"c{n}", -1, correction="no: 60 days"))
    state.on_answer(harness.answer("acme", "old", version="<i>v0000</i>"), t - 40)  # answers are anyone's text
    state.on_feedback(harness.rating("acme", "c0", 1))
    state.on_feedback(harness.rating("acme", "later", 1))
    page = status_page(state, "acme", with_curves=False) or ""
    assert "<h2>Live quality</h2>" in page
    assert live_row(page, "v0001") == ["v0001", "<b>current</b>", "6", "6", "5", "1", "16.7%", "0"]
    assert live_row(page, "v0002") == ["v0002", "<b>canary 25%</b>", "2", "2", "0", "2", "100.0%", "2"]
    assert live_row(page, "&lt;i&gt;v0000&lt;/i&gt;")[1:] == ["earlier", "1", "0", "0", "0", "—", "0"]
    assert "<i>v0000</i>" not in page
    arms = dict(re.findall(r"id=(canary-[a-z-]+|incumbent-[a-z-]+)>([^<]*)<", page))
    assert (arms["canary-served"], arms["incumbent-served"]) == ("2", "6")
    assert (arms["canary-negative-share"], arms["incumbent-negative-share"]) == ("100.0%", "16.7%")
    assert "canary arm (v0002)" in page and "incumbent arm (v0001)" in page
    assert "id=ignored-duplicate>1<" in page and "id=ignored-other_tenant>0<" in page
    assert "id=ratings-waiting>1<" in page
