"""Commands for what the student learns: `curate`, `train`, `nightly`, retriever and reranker
tuning, and the registry's versions (`models`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from distill.cli.base import HOME_HELP, answerability_line, app, print_rows, stderr_console, workspace_at
from distill.errors import DistillError


@app.command()
def curate(explain: Optional[str] = typer.Option(None, help="a trace id, query id or query text: say why it was kept or rejected"),
           require_min: Optional[int] = typer.Option(None, help="fail (exit 2) when fewer traces than this pass the rules"),
           lake: bool = typer.Option(False, help="read the traces from the DuckLake catalog of [lake] (all machines' "
                                                  "pushed traces) instead of this workspace's DuckDB file"),
           cutoff: Optional[str] = typer.Option(None, help="the evaluation cutoff, an ISO date or time (default: "
                                                           "curate.eval_days before the log's newest question)"),
           home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Pick the frequent, confident, grounded traces to train on; record why for every other."""
    workspace = workspace_at(home)
    console = stderr_console()
    if explain is not None:
        from distill.store.segments import has_traces
        from distill.store.traces import TraceStore

        if not has_traces(workspace.traces_db):
            raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
        with TraceStore(workspace.traces_db) as store:
            rows = store.explain(explain)
        if not rows:
            raise DistillError(f"no curated trace matches '{explain}'; run `distill curate` first or check the id")
        for row in rows:
            verdict = row["decision"] + (f" ({row['reason']})" if row["reason"] else "")
            console.print(f"[bold]{verdict}[/]  trace {row['trace_id']}, asked {row['asked_at']:%Y-%m-%d %H:%M} "
                          f"in scope {row['scope']} ({row['origin'] or 'collect'}): {row['query']!r}\n"
                          f"  answer: {row['answer']!r}" + (f" (refused: {row['refusal_reason']})"
                                                             if row["refusal_reason"] else "") + "\n"
                          f"  {answerability_line(row)}\n"
                          f"  intent {row['intent_id']} ({row['representative']!r}): {row['frequency']} traces in "
                          f"the window, agreement {row['agreement']:.2f}, its answer {row['intent_answer']!r}")
        return
    from collections import Counter

    from rich.table import Table

    from distill.learn.curate import curate as run_curate

    with console.status("curating"):
        result = run_curate(workspace, workspace.config(), require_min=require_min, from_lake=lake,
                            cutoff=_moment(cutoff, "--cutoff") if cutoff else None)
    table = Table(title=f"curation run {result.run_id}")
    table.add_column("decision")
    table.add_column("reason")
    table.add_column("traces", justify="right")
    for decision in ("train", "eval", "reject"):
        for reason, count in result.decisions.get(decision, Counter()).most_common():
            table.add_row(decision, reason or "-", str(count))
    console.print(table)
    basis = result.cutoff_basis
    counted = "given with --cutoff" if basis.get("given") else \
        f"{workspace.config().curate.eval_days} days before the newest question, {basis['newest']:%Y-%m-%d %H:%M}" + (
            f"; {basis['ask_questions_ignored']} asked with `distill ask` not counted" if basis.get("ask_questions_ignored")
            else "")
    console.print(f"{result.traces_seen} traces in {result.intents} intents; cutoff {result.cutoff:%Y-%m-%d %H:%M} "
                  f"({counted}); {result.leaked_eval_traces} eval traces share a wording with training; "
                  f"{result.examples} training examples -> {result.dataset_path or '(none)'}")
    if result.calibration:
        console.print(f"the corpus changed: {result.calibration.summary()}")
    if result.rewordings_written:
        console.print(f"rewordings: {result.rewordings_written} written, {result.rewordings_kept} answered by RAG "
                      f"the way their intents are (kept as examples)")
    if result.train == 0 and (worst := result.most_rejected()):
        console.print(f"[yellow]no trace passed the rules; '{worst[0]}' rejected most ({worst[1]}): "
                      f"relax its setting in [curate] or collect more traffic[/]")


def _moment(value: str, option: str):
    from distill.timestamps import utc

    try:
        return utc(value)
    except ValueError:
        raise DistillError(f"{option} {value!r} is not an ISO date or time (for example 2026-10-24)") from None


@app.command()
def train(dataset: Optional[Path] = typer.Option(None, help="a dataset folder from `distill curate` (default: the latest)"),
          method: Optional[str] = typer.Option(None, help="'full' or 'lora' (default: train.method, full)"),
          max_steps: Optional[int] = typer.Option(None, help="stop after this many steps (default: train.epochs)"),
          base_model: Optional[str] = typer.Option(None, help="'SmolLM2-135M-Instruct' or a local model folder"),
          home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Fine-tune a new student version with TRL on the curated dataset (does not promote it)."""
    from distill.learn.train import train as run_train

    workspace = workspace_at(home)
    overrides: dict = {}
    if method is not None:
        overrides["method"] = method
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if base_model is not None:
        overrides["base_model"] = base_model
    result = run_train(workspace, workspace.config({"train": overrides}), dataset)
    if result is None:  # a secondary process of `accelerate launch`
        return
    losses = result.losses
    stderr_console().print(f"trained {result.version} on {result.examples} examples in {result.steps} steps "
                     f"({result.runtime_s:.0f} s); loss {losses[0]:.3f} -> {losses[-1]:.3f}; saved to {result.path}. "
                     f"Promote it with: distill models promote {result.version}")


@app.command()
def nightly(gold: Optional[Path] = typer.Option(None, help="gold.jsonl (query_id, gold_answers): gate on F1 against gold "
                                                         "instead of agreement with the teacher"),
            force: bool = typer.Option(False, "--force", help="run even if today's run already finished"),
            lake: bool = typer.Option(False, help="curate the traces of the DuckLake catalog of [lake] (every machine's "
                                                  "pushed traces)"),
            home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Curate, train, evaluate on the held-out window, and promote only if the gate passes (for cron)."""
    from distill.jobs.eval_sets import load_gold
    from distill.jobs.nightly import nightly as run_nightly

    workspace = workspace_at(home)
    console = stderr_console()
    result = run_nightly(workspace, workspace.config(), gold=load_gold(gold) if gold else None, force=force,
                         say=lambda stage, text: console.print(f"[bold]{stage:9s}[/] {text}"), from_lake=lake)
    if result.status == "skipped":
        console.print(f"[yellow]{result.reason}[/]")
    console.print(f"serving: {result.current or 'no student (everything goes to RAG)'}; "
                  f"run record: distill sql \"SELECT * FROM nightly_runs WHERE run_id = '{result.run_id}'\"")


@app.command("tune-retriever")
def tune_retriever(gold: Optional[Path] = typer.Option(None, help="gold JSONL with query_id and gold_doc_ids: judge the "
                                                                  "held-out questions by gold documents instead of the teacher's citations"),
                   rollback: bool = typer.Option(False, "--rollback", help="switch back to the retriever active before the last switch"),
                   switch: Optional[str] = typer.Option(None, help="switch to this tuned version (e.g. v0002) without the gate"),
                   home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Fine-tune the embedder on the kept traces' citations; switch only if held-out recall@5 and MRR improve."""
    from distill.rag.tune import rollback_retriever, switch_retriever
    from distill.rag.tune import tune_retriever as run_tune

    workspace = workspace_at(home)
    console = stderr_console()
    if switch:
        switch_retriever(workspace, workspace.config(), switch)
        console.print(f"retrieving with {switch}; running routers switch within router.reload_s")
        return
    if rollback:
        console.print(f"retrieving with {rollback_retriever(workspace, workspace.config())} again; running routers switch "
                      f"within router.reload_s")
        return
    rows = None
    if gold:
        from distill.jobs.eval_sets import load_gold_rows

        rows = {row["query_id"]: row for row in load_gold_rows(gold) if row.get("query_id")}
    result = run_tune(workspace, workspace.config(), rows)
    console.print(f"{result.version}: {result.pairs} training triplets, {result.held_out} held-out questions "
                  f"({result.held_out_seen} in a wording seen in training; relevance: {result.relevance}), "
                  f"{result.runtime_s:.0f} s")
    console.print(("[green]" if result.switched else "[yellow]") + result.reason + "[/]")
    console.print(f"saved to {result.path}")


@app.command("tune-reranker")
def tune_reranker(gold: Optional[Path] = typer.Option(None, help="gold JSONL with query_id and gold_doc_ids: judge the "
                                                                 "held-out questions by gold documents instead of the teacher's citations"),
                  rollback: bool = typer.Option(False, "--rollback", help="switch back to the reranker (or none) active before "
                                                                         "the last switch"),
                  off: bool = typer.Option(False, "--off", help="stop reranking: the teacher uses retrieval order "
                                                               "(--rollback turns it back on)"),
                  home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Train a cross-encoder reranker on the kept traces' citations; switch it on only if held-out recall@1 rises and MRR does not fall."""
    from distill.rag.rerank import reranker_off, rollback_reranker
    from distill.rag.rerank import tune_reranker as run_tune

    workspace = workspace_at(home)
    console = stderr_console()
    if off:
        version = reranker_off(workspace)
        console.print(f"reranker {version} switched off; running routers follow within router.reload_s" if version else
                      "no reranker was on")
        return
    if rollback:
        version = rollback_reranker(workspace)
        state = f"reranking with {version} again" if version else "reranker off again (none was on before the last switch)"
        console.print(f"{state}; running routers follow within router.reload_s")
        return
    rows = None
    if gold:
        from distill.jobs.eval_sets import load_gold_rows

        rows = {row["query_id"]: row for row in load_gold_rows(gold) if row.get("query_id")}
    result = run_tune(workspace, workspace.config(), rows)
    console.print(("[green]" if result.switched else "[yellow]") +
                  f"{result.version}: {result.pairs} training pairs, {result.held_out} held-out questions "
                  f"(relevance: {result.relevance}); {result.reason}; saved to {result.path}[/]")


models_app = typer.Typer(help="List, inspect, promote and roll back student versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _student(student: Optional[str], workspace) -> str:
    return student or workspace.config().train.student_name


@models_app.command("list")
def models_list(student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """The versions of a student, the promoted one marked."""
    from distill import registry

    workspace = workspace_at(home)
    name = _student(student, workspace)
    promoted = registry.current(workspace.models_dir, name)
    rows = []
    for version in registry.versions(workspace.models_dir, name):
        m = registry.manifest(workspace.models_dir, name, version)
        rows.append({"version": version, "current": "*" if version == promoted else "", "created": m["created_at"][:19],
                     "examples": m["examples"], "intents": len(m["intents"]), "final loss":
                     (m["metrics"]["train_losses"] or [None])[-1], "eval": _eval_short(m.get("eval"))})
    if not rows:
        raise DistillError(f"student '{name}' has no versions in {workspace.models_dir}; run `distill train` first")
    print_rows(rows)


def _eval_short(scores: dict | None) -> str:
    if not scores or scores.get("metric") not in scores:
        return "-"
    return f"{scores['metric']} {scores[scores['metric']]:.3f} on {scores['queries']}"


@models_app.command("show")
def models_show(version: str = typer.Argument(..., help="e.g. v0003"),
                student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Print a version's manifest."""
    from distill import registry

    workspace = workspace_at(home)
    print(json.dumps(registry.manifest(workspace.models_dir, _student(student, workspace), version), indent=2))


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="e.g. v0003"),
                   student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                   home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Make a version the one the router serves (atomic)."""
    from distill import registry

    workspace = workspace_at(home)
    registry.promote(workspace.models_dir, _student(student, workspace), version)
    stderr_console().print(f"{version} is now current")


@models_app.command("rollback")
def models_rollback(student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                    home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Promote the previously promoted version again."""
    from distill import registry

    workspace = workspace_at(home)
    version = registry.rollback(workspace.models_dir, _student(student, workspace))
    stderr_console().print(f"rolled back: {version} is now current")
