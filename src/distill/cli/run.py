"""Commands for answering and judging: `ask`, `serve`, `eval`, `report`, `quickstart`, and
`config` (the effective settings).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.cli.base import HOME_HELP, answerability_line, app, print_rows, stderr_console, workspace_at


@app.command("eval")
def eval_(gold: Optional[Path] = typer.Option(None, help="gold JSONL ({query_id or query, scope, gold_answers, should_refuse?, "
                                                       "gold_doc_ids?, type?}): score against gold as well as the teacher"),
          on_gold: bool = typer.Option(False, "--on-gold", help="evaluate on the gold file's questions instead of the held-out traffic"),
          limit: Optional[int] = typer.Option(None, help="distinct questions at most (default eval.max_queries)"),
          suite: Optional[Path] = typer.Option(None, help="run this regression suite instead (JSON lines: query, scope, "
                                                          "expect_route, expect_answer, expect_refusal); exit 1 if a case fails"),
          home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Score teacher, cache, student and routed system side by side on held-out traffic or a gold file."""
    workspace = workspace_at(home)
    console = stderr_console()
    config = workspace.config()
    if suite:
        from distill.jobs.eval_sets import load_suite
        from distill.jobs.evaluate import run_suite

        with _router(workspace, workspace.config({"router": {"log_traces": False}})) as router:
            results = run_suite(router, load_suite(suite), config.eval.success_f1)
        print_rows([{k: r[k] for k in ("query", "route", "reason", "passed", "problems")} for r in results])
        failed = sum(not r["passed"] for r in results)
        console.print(f"{len(results) - failed} of {len(results)} cases passed")
        raise typer.Exit(1 if failed else 0)
    from distill.jobs.evaluate import run_eval

    run_id, figures = run_eval(workspace, config, gold, on_gold, limit)
    systems = figures["systems"]
    keys = [figures["quality_metric"], "agreement", "citation_correct", "refusal_correct", "served_share",
            "replay_share", "student_share",
            "latency_p50_ms", "latency_p95_ms", "cost_per_success_usd"]
    print_rows([{"metric": k, **{name: s.get(k) for name, s in systems.items()}} for k in keys])
    keeps = figures["served_share_keeping"]
    console.print(f"{figures['queries']} questions ({figures['traffic']} asked, {figures['gold_queries']} with gold). "
                  f"Share served without RAG keeping 95 % / 99 % of the teacher's {figures['quality_metric']}: "
                  f"{keeps['95%']:.1%} / {keeps['99%']:.1%}. Routed reasons: {systems['routed']['reasons']}")
    rated = ", ".join(f"{r['route']} {r['rated']} ({r['share_rated_wrong']:.1%} wrong)" for r in figures["ratings"])
    console.print(f"Users' ratings: {rated or 'none yet (POST /v1/feedback, docs/feedback.md)'}")
    console.print(f"stored as eval run {run_id}; see it with: distill report")


@app.command()
def report(run: Optional[str] = typer.Option(None, help="an eval run id (default: the latest)"),
           out: Optional[Path] = typer.Option(None, help="folder for report.html and report.json (default <home>/reports/<time>)"),
           home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Write the HTML report (plots inline) and its figures as JSON from the latest `distill eval`."""
    from distill.jobs.report import write_report

    path = write_report(workspace_at(home), run, out)
    print(path)


def _router(workspace, config=None, watch: bool = False):
    """The workspace's router (following the workspace's changes with `watch`), saying so when its
    promoted student could not be loaded."""
    from distill.serve.router import Router

    with stderr_console().status("loading the router"):
        router = Router.from_workspace(workspace, config, watch=watch)
    if router.student_problem:
        stderr_console().print(f"[yellow]{router.student_problem}[/]")
    return router


@app.command()
def ask(question: str = typer.Argument(..., help="the question"),
        scope: Optional[str] = typer.Option(None, help="its scope (tenant, product, website)"),
        explain: bool = typer.Option(False, "--explain", help="also print every check's score"),
        home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Answer through the router: replay or the student where it is safe, else RAG."""
    router = _router(workspace_at(home))
    router.origin = "ask"
    with router:
        routed = router.answer(question, scope)
    print(routed.answer or "(no answer)")
    console = stderr_console()
    served_by = {"student": f"student {routed.student_version} reading the evidence",
                 "replay": f"replay of an agreed answer (student {routed.student_version}'s intents)"}.get(routed.route,
                                                                                                    "RAG teacher")
    console.print(f"route: [bold]{routed.route}[/] ({routed.reason}) answered by {served_by} in "
                  f"{routed.latency_ms:.0f} ms (router {routed.router_ms:.0f} ms)")
    if routed.citations:
        console.print("citations: " + ", ".join(routed.citations))
    if explain:
        console.print("checks: " + json.dumps(routed.checks))
        if routed.teacher_answer is not None:
            answer = routed.teacher_answer
            console.print("teacher: " + answerability_line(vars(answer)) +
                          (f"; refused: {answer.refusal_reason}" if answer.refused else ""))


@app.command()
def serve(host: Optional[str] = typer.Option(None, help="listen address (default serve.host, 127.0.0.1)"),
          port: Optional[int] = typer.Option(None, help="port (default serve.port, 8080)"),
          model: Optional[str] = typer.Option(None, help="serve this model alone, no router: a student version folder, "
                                                          "any save_pretrained folder or SmolLM2-135M-Instruct (a CPU "
                                                          "stand-in for vLLM, for teacher.openai or student.endpoint)"),
          workers: int = typer.Option(1, min=1, help="processes behind the port, each with its own router; all log "
                                                      "traces and follow the workspace's changes"),
          home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Serve the router over the OpenAI chat-completions API (/v1/chat/completions, /v1/models,
    /health, /metrics), or with --model one model over the same API."""
    from distill.serve.app import create_app, create_model_app, serve_workers
    from distill.serve.app import serve as run_serve

    workspace = workspace_at(home)
    config = workspace.config()
    address = f"http://{host or config.serve.host}:{port or config.serve.port}/v1"
    if model:
        from distill.learn.student import ChatModel

        with stderr_console().status(f"loading {model}"):
            chat_model = ChatModel.load(model, workspace.models_dir, config.student.runtime)
        stderr_console().print(f"serving model '{chat_model.name}' on {address}")
        run_serve(create_model_app(chat_model, config), config, host, port)
        return
    if workers > 1:
        stderr_console().print(f"serving {workers} router processes as '{config.serve.model_name}' on {address}")
        serve_workers(workspace.home, config, workers, host, port)
        return
    router = _router(workspace, config, watch=True)
    stderr_console().print(f"serving student {router.version or '(none: everything goes to RAG)'} as "
                     f"'{config.serve.model_name}' on {address}")
    run_serve(create_app(router, config), config, host, port)


@app.command("config")
def show_config(prefix: str = typer.Argument("", help="only the settings whose key starts with this, e.g. teacher or "
                                                     "router.max_error_rate"),
                home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Print the effective settings (defaults, then <home>/distill.toml) as TOML, each with its help; a
    value the workspace changed names its default."""
    from distill.config import as_toml, load_config

    print(as_toml(workspace_at(home).config(), prefix, defaults=load_config()))


@app.command()
def quickstart(home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Run the whole loop on the embedded sample: ingest, collect, curate, nightly, ask, eval, report."""
    from distill.jobs.quickstart import run

    workspace = workspace_at(home)
    run(workspace, stderr_console())
    suffix = f" --home {workspace.home}" if home else ""
    print(f"Next: distill sql \"SELECT route, route_reason, count(*) FROM traces GROUP BY ALL\"{suffix}\n"
          f"      distill ask \"How do I export my notes?\" --scope notes --explain{suffix}\n"
          f"      distill serve{suffix}   # OpenAI-compatible, on http://127.0.0.1:8080/v1")
