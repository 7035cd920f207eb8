"""`distill report`: one self-contained HTML page (plots inline as SVG) and the same figures as JSON.

    path = write_report(workspace)          # the latest `distill eval` run
    path  # PosixPath('/srv/acme/reports/20261126-0712/report.html')

It reads what the earlier stages stored, so it never re-runs a model: the latest evaluation run
(`eval_runs`), the one before it for "what changed", and the latest nightly runs (`nightly_runs`).
Sections: the headline, the systems side by side (teacher, cache, student, routed), the
cost-quality curve, why questions went to RAG, slices by scope and category, retrieval, and what
changed since the last run.
"""

from __future__ import annotations

import html
import io
import json
from datetime import datetime, timezone
from pathlib import Path

from distill.errors import DistillError
from distill.store.traces import TraceStore
from distill.workspace import Workspace

ROWS = [  # (metric key, label, format)
    ("f1_vs_gold", "token F1 vs gold", "{:.3f}"), ("exact_vs_gold", "exact match vs gold", "{:.3f}"),
    ("agreement", "agreement with the teacher (F1)", "{:.3f}"), ("citation_correct", "citation correct", "{:.3f}"),
    ("groundedness", "groundedness in cited chunks", "{:.3f}"), ("refusal_correct", "refusal correct", "{:.3f}"),
    ("refused", "refused", "{:.3f}"), ("format_valid", "format valid", "{:.3f}"),
    ("served_share", "share served without RAG", "{:.1%}"), ("replay_share", "share replayed (an agreed answer)", "{:.1%}"),
    ("student_share", "share the student generated", "{:.1%}"), ("error_rate", "error rate among those served", "{:.1%}"),
    ("latency_p50_ms", "latency p50 (ms)", "{:,.1f}"),
    ("latency_p95_ms", "latency p95 (ms)", "{:,.1f}"), ("prompt_tokens", "prompt tokens / answer", "{:,.0f}"),
    ("completion_tokens", "completion tokens / answer", "{:,.1f}"), ("success", "successful answers", "{:.3f}"),
    ("cost_per_success_usd", "cost per successful answer (USD)", "{:.7f}"),
]


def headline(figures: dict) -> dict:
    """The routed system against the teacher: the figures the seed promises."""
    teacher, routed = figures["systems"]["teacher"], figures["systems"]["routed"]
    key = figures["quality_metric"]
    cost_ratio = (routed["cost_per_success_usd"] / teacher["cost_per_success_usd"]
                  if routed["cost_per_success_usd"] and teacher["cost_per_success_usd"] else None)
    return {"metric": key, "teacher_quality": teacher[key], "routed_quality": routed[key],
            "quality_kept": round(routed[key] / teacher[key], 4) if teacher[key] else None,
            "served_share": routed["served_share"], "cost_ratio": round(cost_ratio, 4) if cost_ratio else None,
            "latency_p50_ratio": round(routed["latency_p50_ms"] / teacher["latency_p50_ms"], 4)
            if teacher["latency_p50_ms"] else None}


def write_report(workspace: Workspace, run_id: str | None = None, out: Path | None = None) -> Path:
    with TraceStore(workspace.traces_db) as store:
        runs = store.eval_runs(limit=50)
        nightly = store.recent_nightly_runs(limit=5)
    if not runs:
        raise DistillError("no evaluation run to report on; run `distill eval` first")
    current = next((r for r in runs if r["run_id"] == run_id), None) if run_id else runs[0]
    if current is None:
        raise DistillError(f"no evaluation run {run_id}; list them with: distill sql \"SELECT run_id, created_at FROM eval_runs\"")
    previous = next((r for r in runs if r["created_at"] < current["created_at"]), None)
    figures = current["figures"]
    out = out or workspace.home / "reports" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    summary = {"run_id": current["run_id"], "created_at": str(current["created_at"]), "headline": headline(figures),
               "figures": figures, "changes": changes(figures, previous["figures"] if previous else None),
               "previous_run_id": previous["run_id"] if previous else None,
               "nightly": [{k: str(v) if k in ("started_at", "finished_at", "day") else v for k, v in n.items()
                            if k != "figures"} for n in nightly]}
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    (out / "report.html").write_text(_html(summary))
    return out / "report.html"


def changes(figures: dict, before: dict | None) -> list[dict]:
    """Each system's key figures now and in the previous evaluation run."""
    if not before:
        return []
    rows = []
    for system, scores in figures["systems"].items():
        old = before.get("systems", {}).get(system, {})
        for key in (figures["quality_metric"], "served_share", "latency_p50_ms", "cost_per_success_usd"):
            if scores.get(key) is not None and old.get(key) is not None:
                rows.append({"system": system, "metric": key, "before": old[key], "now": scores[key],
                             "change": round(scores[key] - old[key], 6)})
    return rows


# -- rendering ----------------------------------------------------------------------------------

def _svg(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue().split("?>", 1)[-1]  # drop the XML declaration to inline it


def _plots(figures: dict) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems, key = figures["systems"], figures["quality_metric"]
    plots = {}
    curve = sorted(figures["curve"], key=lambda c: c["served_share"])
    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot([c["served_share"] for c in curve], [c["quality"] for c in curve], "o-", label="routed system")
    points: dict[tuple, list[float]] = {}  # error rates that give the same point share one label
    for c in curve:
        points.setdefault((c["served_share"], c["quality"]), []).append(c["max_error_rate"])
    for (share, quality), rates in points.items():
        label = f"{min(rates):g}" if len(rates) == 1 else f"{min(rates):g}-{max(rates):g}"
        ax.annotate(label, (share, quality), fontsize=7, xytext=(3, 3), textcoords="offset points")
    teacher = systems["teacher"][key]
    for share, style, label in ((1.0, "-", "teacher only"), (0.99, "--", "99 % of teacher"), (0.95, ":", "95 % of teacher")):
        ax.axhline(teacher * share, color="grey", linestyle=style, linewidth=1, label=label)
    ax.set_xlabel("share of traffic served without RAG (replay or student)")
    ax.set_ylabel(key.replace("_", " "))
    ax.set_title("cost-quality curve (labels: router.max_error_rate)")
    ax.legend(fontsize=8)
    plots["curve"] = _svg(fig)

    names = list(systems)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, (metric, title) in zip(axes, ((key, key.replace("_", " ")), ("cost_per_success_usd", "USD per successful answer"),
                                          ("latency_p50_ms", "latency p50 (ms)"))):
        values = [systems[n].get(metric) or 0 for n in names]
        ax.bar(names, values, color=["#777", "#c93", "#a6c", "#39c", "#3a6"][: len(names)])
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    plots["systems"] = _svg(fig)

    reasons = systems["routed"]["reasons"]
    fig, ax = plt.subplots(figsize=(6.4, 0.4 + 0.3 * len(reasons)))
    ax.barh(list(reasons)[::-1], list(reasons.values())[::-1], color="#39c")
    ax.set_xlabel("questions (traffic-weighted)")
    ax.set_title("routed system: served, or why RAG answered")
    plots["reasons"] = _svg(fig)
    return plots


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value, pattern: str) -> str:
    return "–" if value is None else pattern.format(value)


def _html(summary: dict) -> str:
    figures, top = summary["figures"], summary["headline"]
    systems, plots = figures["systems"], _plots(figures)
    names = list(systems)
    side = _table(["metric"] + names, [[label] + [_fmt(systems[n].get(k), f) for n in names] for k, label, f in ROWS])
    curve = _table(["max error rate", "student share", "error rate served", figures["quality_metric"], "USD per success"],
                   [[c["max_error_rate"], f"{c['served_share']:.1%}", _fmt(c["error_rate"], "{:.1%}"),
                     _fmt(c["quality"], "{:.3f}"), _fmt(c["cost_per_success_usd"], "{:.7f}")] for c in figures["curve"]])
    wordings = figures.get("by_wording", {})
    by_wording = _table(["wording", "system", "traffic", "served without RAG", "error rate served", figures["quality_metric"]],
                        [[kind, name, g["traffic"], _fmt(g["served_share"], "{:.1%}"), _fmt(g["error_rate"], "{:.1%}"),
                          _fmt(g.get(figures["quality_metric"]), "{:.3f}")]
                         for kind, group in wordings.items() for name, g in group.items() if name != "teacher"])
    slices = ""
    for kind, groups in figures.get("slices", {}).items():
        if groups:
            slices += f"<h3>by {kind}</h3>" + _table(
                [kind, "traffic"] + [f"{n} quality" for n in names] + ["routed: student share"],
                [[name, g["traffic"]] + [_fmt(g[n]["quality"], "{:.3f}") for n in names]
                 + [f"{g['routed']['served_share']:.0%}"] for name, g in groups.items()])
    retrieval = figures.get("retrieval") or {}
    changed = _table(["system", "metric", "before", "now", "change"],
                     [[c["system"], c["metric"], c["before"], c["now"], f"{c['change']:+g}"] for c in summary["changes"]]) \
        if summary["changes"] else "<p>No earlier evaluation run.</p>"
    nightly = _table(["started", "status", "reason", "serving before", "candidate"],
                     [[n["started_at"], n["status"], n["reason"], n["serving_before"], n["candidate"]]
                      for n in summary["nightly"]]) if summary["nightly"] else "<p>No nightly run yet.</p>"
    keeps = figures["served_share_keeping"]
    ratings = _table(["answered by", "ratings", "rated wrong", "share rated wrong", "mean score"],
                     [[r["route"], r["rated"], r["rated_wrong"], f"{r['share_rated_wrong']:.1%}", r["mean_score"]]
                      for r in figures["ratings"]]) if figures.get("ratings") else \
        "<p>No ratings yet (POST /v1/feedback, see docs/feedback.md).</p>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>distill report</title><style>
body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}.big{{font-size:1.3em}}</style></head><body>
<h1>distill report</h1>
<p>Evaluation run <code>{summary['run_id']}</code> at {summary['created_at']} on {html.escape(figures['source'])}:
{figures['queries']} distinct questions, {figures['traffic']} asked in all, {figures['gold_queries']} with gold;
student {figures['student_version'] or 'none'}, router.max_error_rate {figures['max_error_rate']}
(calibrated on {figures['decision']['examples']} wordings from the traces), semantic cache at cosine {figures['cache_threshold']}.</p>
<p class="big">The routed system keeps <b>{_fmt(top['quality_kept'], '{:.1%}')}</b> of the teacher's {top['metric'].replace('_', ' ')}
({_fmt(top['routed_quality'], '{:.3f}')} vs {_fmt(top['teacher_quality'], '{:.3f}')}) while the student serves
<b>{top['served_share']:.1%}</b> of the traffic, at <b>{_fmt(top['cost_ratio'], '{:.0%}')}</b> of the teacher's cost per
successful answer and {_fmt(top['latency_p50_ratio'], '{:.2f}')}x its median latency.
Share the student can take keeping 95 % / 99 % of the teacher's quality: {keeps['95%']:.1%} / {keeps['99%']:.1%}.
Of the questions the student served, {figures.get('served_wording_seen_in_training', 0)} were asked in a wording it was trained on.</p>
<h2>Systems side by side</h2>{side}{plots['systems']}
<h2>Seen and novel wordings</h2><p>Seen: asked in a wording the student was trained on. An answer served without
RAG is an error when it comes from another document than RAG's answer and their token F1 is below eval.success_f1.</p>{by_wording}
<h2>What users said</h2><p>Ratings of answers (docs/feedback.md), by how the answer was served: the check no
comparison with the teacher can make.</p>{ratings}
<h2>Cost-quality curve</h2>{plots['curve']}{curve}
<h2>Why questions went to RAG</h2>{plots['reasons']}
<h2>Slices</h2>{slices or '<p>No scopes or categories.</p>'}
<h2>Retrieval (teacher)</h2><p>{'recall@1 {recall_at_1:.3f}, recall@{k} {recall_at_k:.3f}, MRR {mrr:.3f} over {queries} gold questions'.format(**retrieval) if retrieval else 'No gold to score retrieval against.'}</p>
<h2>What changed since the last run</h2>{changed}<h3>Latest nightly runs</h3>{nightly}
</body></html>"""
