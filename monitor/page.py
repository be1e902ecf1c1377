"""The status pages, rendered on the server from ``MonitorState``: plain HTML, no script, nothing fetched
from outside (the page must work where nothing outside can be reached).

Everything that comes from a record (tenant names, versions, gate reasons, dead-letter reasons, which are
user data) is escaped with ``html.escape`` on its way into the page; links are URL-quoted.
"""

from __future__ import annotations

import html
import logging
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from monitor.signals import Alert, Reading
from monitor.state import AdapterRecord, LiveVersion, MonitorState, manifest_figures
from streamtune.contracts import TENANT_PATTERN
from streamtune.errors import ContractError
from streamtune.manifest import Manifest
from streamtune.quality import BASE, IGNORED_REASONS, Figures

__all__ = ["index_page", "loss_curve_file", "loss_curve_path", "status_page", "stored_versions"]

log = logging.getLogger(__name__)

_TENANT = re.compile(TENANT_PATTERN)
_VERSION = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } .num { text-align: right; font-variant-numeric: tabular-nums; }
.ok { color: #176117; } .bad { color: #a01919; } .muted { color: #777; }
tr.alert td:first-child { color: #a01919; font-weight: bold; }
img.loss { max-width: 320px; display: block; } td.figures { white-space: nowrap; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(at: float | None) -> str:
    return "—" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _seconds(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _span(seconds: float) -> str:
    """A duration for people: 45 s, 12 min, 3 h 05 min, 2 d 4 h."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _number(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _document(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta http-equiv="refresh" content="10"><style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n'
    )


def loss_curve_path(tenant: str, version: str) -> str:
    return f"/status/{quote(tenant, safe='')}/loss/{quote(version, safe='')}.png"


_FIGURE_LABELS = {
    "train_final_loss": "final training loss",
    "held_out_loss": "held-out loss",
    "current_held_out_loss": "held-out loss of the one it replaced",
    "held_out_exact_match": "held-out exact match",
    "held_out_token_f1": "held-out token F1",
    "anchor_loss": "anchor loss",
}


def loss_curve_file(adapters_dir: Path, tenant: str, version: str) -> Path | None:
    """``<adapters_dir>/<tenant>/<version>/loss.png`` when it exists inside the adapter store, else None: the
    names are checked, and the resolved path too, so that neither ``..`` nor a symbolic link leads out."""
    if not _TENANT.match(tenant) or not _VERSION.match(version):
        return None
    store = adapters_dir.resolve()
    path = (store / tenant / version / "loss.png").resolve()
    if not path.is_relative_to(store) or not path.is_file():
        return None
    return path


def stored_versions(adapters_dir: Path, tenant: str, limit: int = 20) -> list[Manifest]:
    """The tenant's last ``limit`` versions in the adapter store (read-only, through the manifest type): the
    topic announces only the versions that were served, the store also holds those the gate rejected."""
    if not _TENANT.match(tenant):
        return []
    folder = adapters_dir / tenant
    try:
        names = sorted(p.name for p in folder.iterdir() if _VERSION.match(p.name) and (p / "manifest.json").is_file())
    except OSError:
        return []
    found = []
    for name in names[-limit:]:
        try:
            found.append(Manifest.load(folder / name))
        except ContractError as exc:
            log.warning("adapter store: %s", exc)
    return found


def index_page(state: MonitorState) -> str:
    rows = []
    alerts = state.alerts()
    for name in sorted(state.tenants):
        tenant = state.tenants[name]
        current = tenant.current
        rows.append(
            f'<tr><td><a href="/status/{quote(name, safe="")}">{_e(name)}</a></td>'
            f"<td>{_e(current.version) if current else '—'}</td><td class=num>{tenant.queries}</td>"
            f"<td class=num>{tenant.answers}</td><td class=num>{tenant.errors}</td>"
            f"<td class=num>{tenant.dead_letters}</td>"
            f"<td>{_e(', '.join(sorted({a.reading.alert for a in alerts.get(name, [])})) or 'none')}</td></tr>"
        )
    table = (
        "<table><tr><th>tenant</th><th>current adapter</th><th>queries</th><th>answers</th><th>errors</th>"
        "<th>dead letters</th><th>alerts</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p class=muted>No records read yet.</p>"
    )
    body = f"<h1>streamtune monitor</h1>\n{table}\n<p><a href=/metrics>/metrics</a></p>"
    return _document("streamtune monitor", body)


def _share(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


_LIVE_COLUMNS = (
    ("served", "served"),
    ("rated", "rated"),
    ("positive", "+"),
    ("negative", "&minus;"),
    ("negative-share", "negative share"),
    ("corrections", "corrections"),
)
"""Each live-quality column: its id suffix and its head (HTML)."""
_IGNORED_LABELS = {
    "unknown_query": "rating an unknown query",
    "other_tenant": "rating another tenant's answer",
    "duplicate": "rating a query already rated",
}


def _live_cells(figures: Figures) -> list[str]:
    values = (figures.served, figures.rated, figures.positive, figures.negative)
    return [str(v) for v in values] + [_share(figures.negative_share), str(figures.corrections)]


def _version_name(version: str) -> str:
    return "base model" if version == BASE else version


def _live_quality(state: MonitorState, tenant: str) -> str:
    """Per version: answers served, ratings joined and corrections; the canary's arm beside the incumbent's
    while one runs; the ratings that were not joined."""
    percent = state.tenants[tenant].rollout.canary_percent

    def row(live: LiveVersion) -> str:
        role = {"current": "<b>current</b>", "canary": f"<b>canary {percent}%</b>"}.get(live.role, "earlier")
        cells = "".join(f"<td class=num>{_e(cell)}</td>" for cell in _live_cells(live.figures))
        return f'<tr id="live-{_e(live.version)}"><td>{_e(_version_name(live.version))}</td><td>{role}</td>{cells}</tr>'

    head = "".join(f"<th>{name}</th>" for _, name in _LIVE_COLUMNS)
    rows = "".join(row(live) for live in state.live(tenant))
    table = f"<table><tr><th>version</th><th>role</th>{head}</tr>{rows}</table>"
    arms = state.arms(tenant)
    if arms is not None:
        rollout = state.tenants[tenant].rollout
        canary, incumbent = (_live_cells(figures) for figures in arms)
        side = "".join(
            f"<tr><td>{name}</td><td class=num id=canary-{key}>{_e(a)}</td>"
            f"<td class=num id=incumbent-{key}>{_e(b)}</td></tr>"
            for (key, name), a, b in zip(_LIVE_COLUMNS, canary, incumbent, strict=True)
        )
        table += (
            f"<h3>Canary on trial: {_e(rollout.canary)} answers {percent}% of the queries</h3>"
            f"<table id=arms><tr><th>figure</th><th>canary arm ({_e(rollout.canary)})</th>"
            f"<th>incumbent arm ({_e(_version_name(rollout.current or BASE))})</th></tr>{side}</table>"
        )
    ignored = "".join(
        f"<tr><td>{_e(_IGNORED_LABELS[reason])}</td><td class=num id=ignored-{reason}>"
        f"{state.quality.ignored[(tenant, reason)]}</td></tr>"
        for reason in IGNORED_REASONS
    )
    table += (
        f"<table><tr><th>ratings not joined</th><th>count</th></tr>{ignored}"
        f"<tr><td>waiting for their answer</td><td class=num id=ratings-waiting>{state.quality.unknown(tenant)}</td>"
        "</tr></table>"
    )
    return table


_ALERT_LABELS = {
    "QuestionDrift": "question drift (serve's test p-value)",
    "KnowledgeGaps": "knowledge gaps (ungrounded answers)",
    "NegativeFeedback": "negative feedback",
    "StaleAdapter": "stale adapter (age)",
    "FreshnessSLO": "event → searchable p99",
    "DeadLetterRate": "dead letters",
    "ErrorAnswers": "error answers",
}


def _value(reading: Reading, value: float) -> str:
    if reading.unit == "share":
        return f"{value:.1%}"
    if reading.unit == "seconds":
        return _seconds(value) if value < 120 else _span(value)
    if reading.unit == "per_second":
        return f"{value:.4f} /s"
    return f"{value:.2g}"


def _alerts(state: MonitorState, alerts: Sequence[Alert]) -> str:
    """Each signal over its threshold: its value, threshold and since when; "none" when none is. The rule of
    alerts.yml it mirrors is named: Prometheus fires it once it has been over for the rule's ``for:``."""
    now = state.clock()
    rows = []
    for alert in sorted(alerts, key=lambda a: (a.since, a.reading.alert, a.reading.subject)):
        r = alert.reading
        what = _ALERT_LABELS.get(r.alert, r.alert) + (f" of {_version_name(r.subject)}" if r.subject else "")
        key = r.alert + (f"-{r.subject}" if r.subject else "")
        relation = "&lt;" if r.unit == "p_value" else "&gt;"
        rows.append(
            f'<tr class=alert id="alert-{_e(key)}"><td>{_e(what)}</td><td><code>{_e(r.alert)}</code></td>'
            f"<td class=num>{_e(_value(r, r.value))}{' ' + _e(r.detail) if r.detail else ''}</td>"
            f"<td class=num>{relation} {_e(_value(r, r.threshold))}</td>"
            f"<td>{_when(alert.since)} (for {_span(now - alert.since)})</td></tr>"
        )
    block = (
        "<table><tr><th>signal</th><th>rule</th><th>value</th><th>threshold</th><th>over since</th></tr>"
        + "".join(rows) + "</table>"
        if rows
        else "<p id=alerts-none>none</p>"
    )  # fmt: skip
    unreachable = state.drift_unreachable()
    if unreachable:
        urls = ", ".join(f"{_e(source.url)} ({_e(source.error)})" for source in unreachable)
        block += f"<p class=muted id=drift-unreachable>drift: serve metrics unreachable: {urls}</p>"
    return f"<div id=alerts>{block}</div>"


def _knowledge_gaps(state: MonitorState, tenant: str) -> str:
    data = state.tenants[tenant]
    ratio = data.knowledge_gap_ratio
    shown = "—" if ratio is None else f"{ratio:.1%}"
    head = (
        f"<p>Answered without a document that passed the retrieval threshold: <b id=knowledge-gap-ratio>{shown}</b>"
        f" of the last {len(data.grounded)} answers that say (at most {state.settings.knowledge_gap_window}; "
        "error answers and answers of older producers do not say).</p>"
    )
    groups = state.gap_groups(tenant)
    if not groups:
        return head + "<p class=muted id=gap-groups-none>No ungrounded question read.</p>"
    rows = "".join(
        f"<tr class=gap-group><td class=num>{group.count}</td><td>{_e(group.representative)}</td>"
        f"<td>{'<br>'.join(_e(example) for example in group.examples)}</td></tr>"
        for group in groups
    )
    return (
        head + f"<p class=muted>The last {len(data.gap_questions)} ungrounded questions, grouped by shared words: "
        "what to write a document about.</p><table id=gap-groups><tr><th>asked</th><th>question</th>"
        f"<th>also asked as</th></tr>{rows}</table>"
    )


def _adapter_row(tenant: str, record: AdapterRecord, role: str, with_curves: bool) -> str:
    verdict = "promoted" if record.promoted else "rejected"
    figures = "<br>".join(
        f"{_e(_FIGURE_LABELS.get(k, k))} <span class=num>{_number(v)}</span>" for k, v in record.figures.items()
    )
    curve = (
        f'<img class=loss alt="loss curve of {_e(record.version)}" src="{loss_curve_path(tenant, record.version)}">'
        if with_curves
        else "<span class=muted>adapter store not readable here</span>"
    )
    announced = {"canary": f"canary {record.canary_percent}%", "rolled_back": "rolled back"}.get(
        record.state, "current"
    )
    return (
        f"<tr><td>{_e(record.version)}{f' <b>({role})</b>' if role else ''}</td>"
        f"<td>{_when(record.announced_at)}</td><td>{_e(announced)}</td>"
        f"<td><span class={'ok' if record.promoted else 'bad'}>{verdict}</span>"
        f"{' against ' + _e(record.compared_with) if record.compared_with else ''}: {_e(record.reason)}</td>"
        f"<td class=figures>{figures}</td><td class=num>{_seconds(record.to_first_answer_s)}</td><td>{curve}</td></tr>"
    )


def _stored_row(tenant: str, manifest: Manifest) -> str:
    verdict = "promoted" if manifest.gate.promoted else "rejected"
    against = f" against {_e(manifest.gate.compared_with)}" if manifest.gate.compared_with else ""
    figures = "<br>".join(
        f"{_e(_FIGURE_LABELS.get(k, k))} <span class=num>{_number(v)}</span>"
        for k, v in manifest_figures(manifest).items()
    )
    return (
        f"<tr><td>{_e(manifest.version)}</td><td>{_when(manifest.created_at.timestamp())}</td>"
        f"<td><span class={'ok' if manifest.gate.promoted else 'bad'}>{verdict}</span>{against}: "
        f"{_e(manifest.gate.reason)}</td><td class=figures>{figures}</td>"
        f'<td><img class=loss alt="loss curve of {_e(manifest.version)}" '
        f'src="{loss_curve_path(tenant, manifest.version)}"></td></tr>'
    )


def status_page(state: MonitorState, tenant: str, *, with_curves: bool, stored: Sequence[Manifest] = ()) -> str | None:
    """The tenant's page, or None for a tenant nothing was read of. ``stored``: the tenant's versions in the
    adapter store; those never announced (rejected by the gate) get a table of their own."""
    if tenant not in state.tenants:
        return None
    data = state.tenants[tenant]
    figures = state.figures(tenant)
    window = f"{state.settings.window_s:.0f} s"
    current = data.current
    error_ratio = figures["error_ratio"]
    summary = f"""
<table>
<tr><th>figure (window {window})</th><th>value</th></tr>
<tr><td>answer latency p50</td><td class=num id=latency-p50>{_seconds(figures["latency_p50_s"])}</td></tr>
<tr><td>answer latency p99</td><td class=num id=latency-p99>{_seconds(figures["latency_p99_s"])}</td></tr>
<tr><td>event → searchable p50</td><td class=num id=freshness-p50>{_seconds(figures["freshness_p50_s"])}</td></tr>
<tr><td>event → searchable p99</td><td class=num id=freshness-p99>{_seconds(figures["freshness_p99_s"])}</td></tr>
<tr><td>error answers</td><td class=num id=error-ratio>{"—" if error_ratio is None else f"{error_ratio:.1%}"}
 of {figures["answers_in_window"]:.0f}</td></tr>
<tr><td>dead letters</td><td class=num id=dlq-rate>{_number(figures["dlq_per_s"], 4)} /s</td></tr>
<tr><td>promotion → first answer</td><td class=num id=promotion>
{_seconds(figures["promotion_to_first_answer_s"])}</td></tr>
<tr><td>current adapter's age</td><td class=num id=adapter-age>
{"—" if figures["adapter_age_s"] is None else _span(figures["adapter_age_s"])}</td></tr>
<tr><td>training examples waiting for it</td><td class=num id=pending-examples>
{figures["pending_examples"]:.0f}</td></tr>
</table>
<p class=muted>Since start: {data.queries} queries, {data.answers} answers, {data.errors} errors,
{data.dead_letters} dead letters.</p>"""
    canary = data.canary

    def role(record: AdapterRecord) -> str:
        return "current" if record is current else "canary" if record is canary else ""

    history = "".join(_adapter_row(tenant, record, role(record), with_curves) for record in reversed(data.adapters))
    adapters = (
        "<table><tr><th>version</th><th>announced</th><th>as</th><th>gate</th><th>metrics (candidate)</th>"
        f"<th>→ first answer in that role</th><th>loss curve</th></tr>{history}</table>"
        if history
        else "<p class=muted>No adapter announced.</p>"
    )
    announced = {record.version for record in data.adapters}
    unannounced = "".join(_stored_row(tenant, m) for m in reversed(stored) if m.version not in announced)
    if unannounced:
        adapters += (
            "<h3>In the adapter store, never announced</h3><table><tr><th>version</th><th>created</th>"
            f"<th>gate</th><th>metrics (candidate)</th><th>loss curve</th></tr>{unannounced}</table>"
        )
    letters = "".join(
        f"<tr><td>{_when(letter.at)}</td><td>{_e(letter.source)}</td><td class=reason>{_e(letter.reason)}</td></tr>"
        for letter in data.letters
    )
    dead = (
        f"<table><tr><th>at</th><th>source</th><th>reason</th></tr>{letters}</table>"
        if letters
        else "<p class=muted>No dead letters.</p>"
    )
    body = f"""<p><a href="/">all tenants</a></p>
<h1>Tenant <span id=tenant>{_e(tenant)}</span></h1>
<p>Current adapter: <b id=current-adapter>{_e(current.version) if current else "none (base model)"}</b></p>
<h2>Alerts</h2>
{_alerts(state, state.alerts().get(tenant, []))}
<h2>Service levels</h2>{summary}
<h2>Knowledge gaps</h2>
{_knowledge_gaps(state, tenant)}
<h2>Live quality</h2>
<p class=muted>Users' ratings joined to the answers they rate, since the beginning of the topics.</p>
{_live_quality(state, tenant)}
<h2>Adapter history</h2>
{adapters}
<h2>Last dead letters</h2>
{dead}"""
    return _document(f"streamtune monitor: {tenant}", body)
