"""`ReportData` to one self-contained HTML page: text parts as HTML, charts as Vega-Lite specs.

The charts are drawn by Vega-Lite through vega-embed, whose JavaScript (vega, vega-lite and vega-embed,
about 0.9 MB minified) is inlined from the `vl-convert-python` wheel (`vl_convert.javascript_bundle()`), so
nothing is fetched when the page opens, and a Content-Security-Policy forbids any fetch anyway. Every text
that comes from outside (task ids, node ids, failure messages, stderr) is HTML-escaped, masked for secrets,
and bounded; the data for the charts is a JSON island that cannot close its `<script>` element.

For tests and the benchmark the page says what it drew: once the charts are rendered, `<body>` carries
`data-rendered="yes"`, `data-timeline-bars` (the bars Vega drew for task attempts), `data-attempts` (the
attempts in the data) and `data-render-ms`; a chart that fails to render sets `data-render-error`.
"""

from __future__ import annotations

import functools
import html
import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import __version__
from .model import Attempt, Outcome, ReportData, node_label

COLOURS = {
    Outcome.SUCCEEDED: "#2e7d32",
    Outcome.FAILED: "#c62828",
    Outcome.RETRIED: "#ef6c00",
    Outcome.REQUEUED: "#6a1b9a",
    Outcome.RUNNING: "#78909c",
}
STAGE_COLOUR = "#1565c0"
FAILURES_OPEN = 10  # failures whose stderr tail the page shows unfolded
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src 'none'; connect-src 'none'"
)


@functools.cache
def javascript_bundle() -> str:
    """vega, vega-lite and vega-embed as one script (~0.9 MB), built once per process (~1 s)."""
    import vl_convert  # 2 ms to import, but only a report needs it

    return vl_convert.javascript_bundle("window.vegaEmbed = vegaEmbed;")


def _seconds(origin: datetime, moment: datetime) -> float:
    return round((moment - origin).total_seconds(), 3)


def _attempt_row(data: ReportData, attempt: Attempt, label: Callable[[str | None], str]) -> dict[str, Any]:
    end = attempt.end or data.generated_at
    return {
        "t": attempt.task_id,
        "n": label(attempt.node_id),
        "s": _seconds(data.origin, attempt.start),
        "e": _seconds(data.origin, end),
        "d": round(attempt.duration_s(data.generated_at), 3),
        "o": attempt.outcome.value,
        "x": attempt.exit_code,
        "r": attempt.retry_count,
        "q": attempt.requeue_count,
    }


def chart_data(data: ReportData, redact: Callable[[str], str]) -> dict[str, Any]:
    """The JSON island: the datasets and the Vega-Lite specs that draw them."""

    def label(node_id: str | None) -> str:
        return redact(node_label(node_id))

    attempts = [_attempt_row(data, attempt, label) for attempt in data.attempts]
    for row in attempts:
        row["t"] = redact(row["t"])
    stages = [
        {"n": stage.name, "s": _seconds(data.origin, stage.start), "e": _seconds(data.origin, stage.end)}
        for stage in data.stages
    ]
    node_time = [
        {"k": row.kind, "p": part, "m": round(minutes, 4)}
        for row in data.node_time
        for part, minutes in (("busy", row.busy_min), ("idle", max(0.0, row.allocated_min - row.busy_min)))
    ]
    rows = len({row["n"] for row in attempts}) or 1
    step = max(2, min(18, 2400 // rows))
    return {
        "datasets": {"attempts": attempts, "stages": stages, "nodetime": node_time},
        "specs": {
            "timeline": _timeline_spec(step, bool(stages), local=data.info.backend == "local"),
            "durations": _durations_spec(),
            "nodetime": _node_time_spec(),
        },
    }


_X = {"field": "s", "type": "quantitative", "title": "seconds since the run began"}
_OUTCOME_COLOUR = {
    "field": "o",
    "type": "nominal",
    "title": "outcome",
    "scale": {"domain": [o.value for o in COLOURS], "range": list(COLOURS.values())},
}


_BY_NODE = "task attempts by node"


def _timeline_spec(step: int, with_stages: bool, *, local: bool = False) -> dict[str, Any]:
    attempts: dict[str, Any] = {
        "name": "attempts",
        "title": "task attempts by task slot (the local backend's nodes)" if local else _BY_NODE,
        "data": {"name": "attempts"},
        "width": 1000,
        "height": {"step": step},
        "mark": {"type": "bar", "tooltip": True, "stroke": "#ffffff", "strokeWidth": 0.3, "minBandWidth": 1},
        "encoding": {
            "y": {"field": "n", "type": "nominal", "title": "node", "sort": "ascending"},
            "x": _X,
            "x2": {"field": "e"},
            # The page's legend above the chart gives the colours, with their counts; Vega's own would sit
            # beside the stages, which are not coloured by outcome.
            "color": {**_OUTCOME_COLOUR, "legend": None},
            "tooltip": [
                {"field": "t", "title": "task"},
                {"field": "o", "title": "outcome"},
                {"field": "x", "title": "exit code"},
                {"field": "d", "title": "duration (s)", "format": ".2f"},
                {"field": "n", "title": "node"},
                {"field": "s", "title": "start (s)", "format": ".2f"},
                {"field": "r", "title": "retries"},
                {"field": "q", "title": "requeues"},
            ],
        },
    }
    charts = [attempts]
    if with_stages:
        charts.insert(
            0,
            {
                "name": "stages",
                "title": "stages of the run",
                "data": {"name": "stages"},
                "width": 1000,
                "height": {"step": 16},
                "mark": {"type": "bar", "tooltip": True, "color": STAGE_COLOUR},
                "encoding": {
                    "y": {"field": "n", "type": "nominal", "title": "stage", "sort": None},
                    "x": _X,
                    "x2": {"field": "e"},
                    "tooltip": [
                        {"field": "n", "title": "stage"},
                        {"field": "s", "title": "from (s)", "format": ".2f"},
                        {"field": "e", "title": "to (s)", "format": ".2f"},
                    ],
                },
            },
        )
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "vconcat": charts,
        "resolve": {"scale": {"x": "shared"}},
    }


def _durations_spec() -> dict[str, Any]:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "task attempt durations",
        "data": {"name": "attempts"},
        "transform": [
            {"filter": "datum.o !== 'running'"},
            {"bin": {"maxbins": 40}, "field": "d", "as": ["d0", "d1"]},
        ],
        "width": 600,
        "height": 220,
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            # Binned by the transform, each bar from its bin's start to its end: the axis spans them all
            # (binned in the encoding, the last bar overran the axis into the legend).
            "x": {"field": "d0", "type": "quantitative", "bin": {"binned": True}, "title": "duration (s)"},
            "x2": {"field": "d1"},
            "y": {
                "aggregate": "count",
                "type": "quantitative",
                "title": "attempts",
                # Counts: no "0.5 attempts" (tickMinStep alone still lets d3 pick a step of 0.5).
                "axis": {"tickMinStep": 1, "format": ",d", "labelExpr": "datum.value % 1 ? '' : datum.label"},
            },
            "color": _OUTCOME_COLOUR,
        },
    }


def _node_time_spec() -> dict[str, Any]:
    return {
        "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
        "title": "node-minutes: busy and idle",
        "data": {"name": "nodetime"},
        "width": 400,
        "height": {"step": 28},
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "y": {"field": "k", "type": "nominal", "title": None},
            "x": {"field": "m", "type": "quantitative", "stack": True, "title": "node-minutes"},
            "color": {
                "field": "p",
                "type": "nominal",
                "title": None,
                "scale": {"domain": ["busy", "idle"], "range": ["#2e7d32", "#cfd8dc"]},
            },
            "tooltip": [
                {"field": "k", "title": "nodes"},
                {"field": "p", "title": "time"},
                {"field": "m", "title": "node-minutes"},
            ],
        },
    }


def _island(value: object) -> str:
    """JSON that is safe inside `<script type="application/json">`: nothing in it can end the element."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


_SCRIPT = """
(function () {
  var body = document.body;
  var data = JSON.parse(document.getElementById("report-data").textContent);
  body.dataset.attempts = String(data.datasets.attempts.length);
  function count(node, name) {
    var n = 0;
    if (node && node.marktype && node.name === name) return node.items.length;
    var items = node && node.items ? node.items : [];
    for (var i = 0; i < items.length; i++) n += count(items[i], name);
    return n;
  }
  var charts = Object.keys(data.specs).map(function (id) {
    var spec = data.specs[id];
    spec.datasets = data.datasets;
    return vegaEmbed("#chart-" + id, spec, {actions: false, renderer: "canvas"}).then(function (result) {
      if (id !== "timeline") return;
      body.dataset.timelineBars = String(count(result.view.scenegraph().root, "attempts_marks"));
    });
  });
  Promise.all(charts).then(function () {
    body.dataset.renderMs = String(Math.round(performance.now()));
    body.dataset.rendered = "yes";
  }, function (error) {
    body.dataset.renderError = String(error);
    console.error("a chart could not be drawn:", error);
  });
})();
"""

_STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2733;
max-width:1200px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dde3ea}
table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;border-bottom:1px solid #eef1f4;
text-align:left;vertical-align:top}th{font-weight:600;background:#f5f7fa}td.num{text-align:right}
pre{background:#f5f7fa;padding:8px;overflow:auto;max-height:320px;margin:4px 0;font-size:12px;
white-space:pre-wrap;overflow-wrap:anywhere}
.muted{color:#66737f}.legend span{display:inline-block;margin-right:14px}
.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
"""


def render_html(
    data: ReportData, *, redact: Callable[[str], str] = lambda text: text, script: str | None = None
) -> str:
    """The report as one HTML document (str). `script` is the charting JavaScript (default: the bundle
    shipped in `vl-convert-python`); `redact` masks secrets in every text taken from the run."""
    esc: Callable[[object], str] = lambda value: html.escape(redact(str(value)))  # noqa: E731
    info = data.info
    title = f"batchpilot report: {info.workload or info.job_id}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">made {esc(data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))} by batchpilot'
        f" {esc(__version__)} from {esc(_source(info.source))}; times on the axes are seconds after"
        f" {esc(data.origin.strftime('%Y-%m-%d %H:%M:%S UTC'))}</p>",
        "<h2>Summary</h2>",
        _table(
            [
                ("workload", info.workload),
                ("job", info.job_id),
                ("pool", info.pool_id),
                ("backend", info.backend),
                ("run", info.run_id),
                ("tasks", data.tasks),
                ("attempts", len(data.attempts)),
                ("tasks retried or requeued", data.retried_tasks),
            ],
            esc,
        ),
    ]
    if data.summary_lines:
        parts.append("<pre>" + "\n".join(esc(line) for line in data.summary_lines) + "</pre>")
    parts.extend(f'<p class="muted">{esc(note)}</p>' for note in data.notes)
    parts += [
        "<h2>Timeline</h2>",
        '<p class="legend">'
        + "".join(
            f'<span><i style="background:{colour}"></i>{esc(outcome.value)}'
            f" ({data.counts.get(outcome.value, 0)})</span>"
            for outcome, colour in COLOURS.items()
        )
        + "</p>",
        '<div id="chart-timeline"></div>',
        "<h2>Durations</h2>",
        '<div id="chart-durations"></div>',
        _slowest(data, esc),
        "<h2>Node time</h2>",
        _node_time_table(data, esc),
        '<div id="chart-nodetime"></div>',
        "<h2>Failures</h2>",
        _failures(data, esc),
        f'<script type="application/json" id="report-data">{_island(chart_data(data, redact))}</script>',
        f"<script>{script if script is not None else javascript_bundle()}</script>",
        f"<script>{_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _source(source: str) -> str:
    return {
        "run": "the run's events",
        "serve": "the service's events (rolling)",
        "job": "the task records the service keeps (earlier attempts of a retried task are not kept)",
    }.get(source, source)


def _table(rows: list[tuple[str, object]], esc: Callable[[object], str]) -> str:
    body = "".join(f"<tr><th>{esc(key)}</th><td>{esc(value)}</td></tr>" for key, value in rows if value != "")
    return f"<table>{body}</table>"


def _slowest(data: ReportData, esc: Callable[[object], str]) -> str:
    if not data.slowest:
        return '<p class="muted">no task attempt has run yet</p>'
    rows = "".join(
        f"<tr><td>{esc(a.task_id)}</td><td>{esc(a.node_id or '')}</td>"
        f'<td class="num">{a.duration_s(data.generated_at):.2f}</td><td>{esc(a.outcome.value)}</td>'
        f'<td class="num">{esc("" if a.exit_code is None else a.exit_code)}</td></tr>'
        for a in data.slowest
    )
    return (
        f"<p>the {len(data.slowest)} slowest attempts</p><table><tr><th>task</th><th>node</th>"
        f"<th>duration (s)</th><th>outcome</th><th>exit code</th></tr>{rows}</table>"
    )


def _node_time_table(data: ReportData, esc: Callable[[object], str]) -> str:
    if not data.node_time:
        return '<p class="muted">no node ran a task</p>'
    rows = "".join(
        f"<tr><td>{esc(row.kind)}</td><td class='num'>{row.nodes}</td>"
        f"<td class='num'>{row.allocated_min:.4g}</td><td class='num'>{row.busy_min:.4g}</td>"
        f"<td class='num'>{row.idle_share:.0%}</td></tr>"
        for row in data.node_time
    )
    basis = (
        "allocated: the nodes the pool asks for (on the local backend, its task slots), from the nodes being"
        " ready to the end; busy: the time each node ran at least one task"
        if data.info.dedicated_nodes is not None
        else "allocated: the nodes seen running tasks, from the first start to the last end; busy: the time"
        " each node ran at least one task"
    )
    if data.info.source == "serve":
        basis += (
            "; a service's pool counts as allocated throughout, time scaled to zero by --idle-shutdown too"
        )
    return (
        "<table><tr><th>nodes</th><th>count</th><th>allocated node-min</th><th>busy node-min</th>"
        f'<th>idle share</th></tr>{rows}</table><p class="muted">{esc(basis)}</p>'
    )


def _failures(data: ReportData, esc: Callable[[object], str]) -> str:
    if not data.failures:
        return '<p class="muted">no task failed</p>'
    items = []
    for number, failure in enumerate(data.failures):
        # The first few stderr tails are shown open: a report is often read as a picture or a printout.
        shown = " open" if number < FAILURES_OPEN else ""
        lines = failure.stderr_tail.count("\n") + 1
        tail = "last line" if lines == 1 else f"last {lines} lines"
        code = "" if failure.exit_code is None else failure.exit_code
        items.append(
            f"<tr><td>{esc(failure.task_id)}</td><td class='num'>{esc(code)}</td>"
            f"<td>{esc(failure.failure_code or '')}</td><td>{esc(failure.message)}"
            + (
                f"<details{shown}><summary>stderr, {tail}</summary>"
                f"<pre>{esc(failure.stderr_tail)}</pre></details>"
                if failure.stderr_tail
                else ""
            )
            + "</td></tr>"
        )
    more = (
        f'<p class="muted">{data.failures_not_listed} more failures are not listed</p>'
        if data.failures_not_listed
        else ""
    )
    return (
        "<table><tr><th>task</th><th>exit code</th><th>failure code</th><th>message and stderr tail</th></tr>"
        + "".join(items)
        + "</table>"
        + more
    )
