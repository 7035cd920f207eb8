"""The `distill` command line. It parses arguments and calls the stage modules, nothing more.

Heavy libraries are imported inside the commands that need them, so `distill --help` is instant.
A `DistillError` from any stage is printed as one line and exits with status 2; anything else is a
bug, printed as one line that names the file holding its traceback, with status 1.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from distill.errors import DistillError, DistillWarning

app = typer.Typer(help="distill: turn a RAG system's traffic into a small, fast student model.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

HOME_HELP = "workspace folder (traces/, index/, models/); default $DISTILL_HOME or the current directory"


def _workspace(home: Optional[Path]):
    from distill.config import Workspace

    return Workspace.resolve(home)


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


@app.command()
def ingest(path: Path = typer.Argument(..., help="a folder of .md/.txt files, a documents .jsonl, or a dataset file"),
           format: str = typer.Option("auto", "--format", "-f", help="auto, folder, jsonl, squad or faq-versions"),
           version: Optional[int] = typer.Option(None, help="with --format faq-versions: which version to ingest"),
           home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Chunk documents and add them to the hybrid (FAISS + BM25) index; fit the teacher's refusal threshold on them."""
    from distill.rag.index import ingest as run_ingest
    from distill.rag.teacher import ensure_calibrated

    workspace = _workspace(home)
    console = _console()
    config = workspace.config()
    with console.status(f"ingesting {path}"):
        report = run_ingest(workspace, path, config, fmt=format, version=version, progress=False)
    with console.status("fitting the answerability threshold on the documents"):
        calibration = ensure_calibrated(workspace, config)
    console.print(f"[bold]{report.documents_read}[/] documents read: {report.added} new, {report.new_versions} new "
                  f"versions, {report.unchanged} unchanged; {report.chunks_added} chunks added, "
                  f"{report.embedded} embedded")
    for source, count in report.skipped_sources.items():
        console.print(f"[yellow]skipped {count} document(s) from source '{source}'[/] (not in corpus.allowed_sources)")
    for chunk_id in report.flagged_chunks:
        console.print(f"[yellow]flagged as prompt injection:[/] {chunk_id} (fenced as data, never shown as instructions)")
    if calibration:
        console.print(calibration.summary())


@app.command()
def collect(queries: Path = typer.Argument(..., help="JSONL of {\"query\", \"scope\"?, \"query_id\"?, \"timestamp\"?}"),
            limit: Optional[int] = typer.Option(None, help="read at most this many queries"),
            strict: bool = typer.Option(False, help="stop at the first bad line instead of skipping it"),
            backend: Optional[str] = typer.Option(None, help="teacher backend: extractive, transformers or openai"),
            engine: Optional[str] = typer.Option(None, help="'local' or 'ray' (Ray Data actors answer in parallel; "
                                                            "default collect.engine)"),
            home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Answer a query log with the RAG teacher and store every answer as a trace (resumable)."""
    from rich.progress import Progress

    from distill.rag.collect import collect as run_collect
    from distill.rag.collect import require_query_file
    from distill.rag.teacher import Teacher

    workspace = _workspace(home)
    overrides = {"teacher": {"backend": backend}} if backend else {}
    if engine:
        overrides["collect"] = {"engine": engine}
    config = workspace.config(overrides)
    console = _console()
    require_query_file(queries)
    teacher = None
    if config.collect.engine == "local":
        with console.status(f"loading the {config.teacher.backend} teacher"):
            teacher = Teacher.from_workspace(workspace, config)
    with Progress(console=console) as progress:
        task = progress.add_task("answering", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, advance=done, total=total)

        report = run_collect(workspace, config, queries, limit=limit, strict=strict, teacher=teacher,
                             on_progress=advance)
    for line, problem in report.bad_lines[:20]:
        console.print(f"[yellow]{queries}:{line}: {problem} (skipped)[/]")
    if len(report.bad_lines) > 20:
        console.print(f"[yellow]... and {len(report.bad_lines) - 20} more bad lines[/]")
    console.print(f"{report.queries_read} queries read: [bold]{report.answered}[/] answered ({report.refused} refused), "
                  f"{report.skipped_existing} already stored, {len(report.bad_lines)} bad lines; "
                  f"traces in {workspace.traces_db}")
    if report.calibration:
        console.print(report.calibration.summary())


@app.command("import")
def import_(path: Path = typer.Argument(..., help="traces of your own RAG system: JSON lines of {id, query, answer, "
                                                  "contexts, ...} (docs/byo-rag.md), or OTLP JSON GenAI spans; or "
                                                  "ratings of answers: {trace_id, score, ...} or Langfuse scores"),
            fmt: str = typer.Option("auto", "--format", help="jsonl, otlp, scores, or auto (by the first line)"),
            strict: bool = typer.Option(False, help="stop at the first bad record instead of skipping it"),
            home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Import traces written by another RAG system, or users' ratings of answers (idempotent by their ids; bad records reported by line)."""
    from rich.progress import Progress

    from distill.rag.external import import_file
    from distill.store.feedback import detect_scores, import_scores

    workspace = _workspace(home)
    console = _console()
    if not path.is_file():
        raise DistillError(f"{path} is not a file; pass a JSON lines file of traces or ratings (docs/byo-rag.md)")
    scores = fmt == "scores" or (fmt == "auto" and detect_scores(path))
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("importing", total=None)
        advance = lambda n: progress.update(task, advance=n)  # noqa: E731
        report = import_scores(workspace, path, strict, advance) if scores else import_file(workspace, path, fmt, strict, advance)
    for line, problem in report.bad[:20]:
        console.print(f"[yellow]{path}:{line}: {problem} (skipped)[/]")
    if len(report.bad) > 20:
        console.print(f"[yellow]... and {len(report.bad) - 20} more bad records[/]")
    console.print(f"{report.records} records read: [bold]{report.imported}[/] imported, {report.already_stored} already "
                  f"stored, {len(report.bad)} bad; {'ratings' if scores else 'traces'} in {workspace.traces_db}")


@app.command()
def teacher(refit: bool = typer.Option(False, "--refit", help="fit the refusal threshold on the documents again now"),
            home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """What decides the teacher's answers and refusals: retrieval, the refusal threshold and its evidence, what it refused."""
    from distill.rag import answerability
    from distill.rag.index import dense_meta
    from distill.rag.rerank import active_reranker
    from distill.store.segments import has_traces
    from distill.store.traces import TraceStore
    from distill.rag.teacher import ensure_calibrated

    workspace = _workspace(home)
    config = workspace.config()
    console = _console()
    meta = dense_meta(workspace)
    if meta is None:
        raise DistillError(f"no corpus in {workspace.index_dir}; run `distill ingest PATH` first")
    if refit:
        with console.status("fitting the answerability threshold on the documents"):
            ensure_calibrated(workspace, config, force=True)
    index, reranker = config.index, active_reranker(workspace)
    console.print(f"teacher: {config.teacher.backend}; retrieval: {meta['embedder']} (corpus generation "
                  f"{meta.get('generation', 0)}), {'multi-field (heading) ' if index.heading_field else ''}dense fused "
                  f"with BM25 at {index.bm25_weight:g}; reranker: "
                  f"{reranker['version'] + ' on the top ' + str(reranker['candidates']) if reranker and reranker.get('version') else 'off'}")
    calibration = answerability.load_calibration(workspace)
    if not config.teacher.calibrate_answerability:
        console.print(f"answerability threshold {config.teacher.min_answerability} (teacher.min_answerability; "
                      f"teacher.calibrate_answerability is off)")
    elif calibration is None:
        console.print("answerability threshold not fitted yet: `distill collect` or `distill teacher --refit` fits it")
    else:
        stale = calibration.corpus_generation != int(meta.get("generation", 0))
        console.print(calibration.summary() + f"; fitted {calibration.fitted_at} on corpus generation "
                      f"{calibration.corpus_generation}" + (" [yellow](the corpus changed since: refitted by the next "
                                                              "collect or curate)[/]" if stale else ""))
        for kind, shown in calibration.evidence.items():
            if shown.get("examples"):
                console.print(f"  {kind.replace('_', ' ')}, e.g.: " + "; ".join(shown["examples"][:3]))
        console.print("  traffic never moves it (docs/answerability.md)")
    if has_traces(workspace.traces_db):
        with TraceStore(workspace.traces_db) as store:
            rows = store.refusals()
        total = sum(r["n"] for r in rows)
        refused = [r for r in rows if r["reason"]]
        if total:
            console.print(f"the latest {total} teacher answers: {sum(r['n'] for r in refused) / total:.1%} refused" +
                          "".join(f"; {r['reason']} {r['n']} ({r['method'] or 'threshold not recorded'})" for r in refused))


@app.command()
def traffic(squad: Path = typer.Argument(..., help="a SQuAD-format JSON file, e.g. ../shared/datasets/policyqa/dev.json"),
            out: Path = typer.Option(Path("traffic"), help="folder for queries.jsonl and gold.jsonl"),
            n: int = typer.Option(4000, help="number of queries"),
            days: int = typer.Option(28, help="the log spans this many days"),
            seed: int = typer.Option(0, help="random seed")) -> None:
    """Make a realistic query log (Zipf repeats, paraphrases, timestamps) from a QA set."""
    from distill.rag.traffic import make_traffic

    report = make_traffic(squad, out, n_queries=n, days=days, seed=seed)
    _console().print(f"{report.queries} queries over {report.intents} intents ({report.distinct_queries} distinct "
                     f"wordings; top 10 intents = {report.top10_share:.0%} of traffic) -> {report.queries_file}, "
                     f"gold answers -> {report.gold_file}")


@app.command()
def curate(explain: Optional[str] = typer.Option(None, help="a trace id, query id or query text: say why it was kept or rejected"),
           require_min: Optional[int] = typer.Option(None, help="fail (exit 2) when fewer traces than this pass the rules"),
           lake: bool = typer.Option(False, help="read the traces from the DuckLake catalog of [lake] (all machines' "
                                                  "pushed traces) instead of this workspace's DuckDB file"),
           cutoff: Optional[str] = typer.Option(None, help="the evaluation cutoff, an ISO date or time (default: "
                                                           "curate.eval_days before the log's newest question)"),
           home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Pick the frequent, confident, grounded traces to train on; record why for every other."""
    workspace = _workspace(home)
    console = _console()
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
                          f"  {_answerability_line(row)}\n"
                          f"  intent {row['cluster_id']} ({row['representative']!r}): {row['frequency']} traces in "
                          f"the window, agreement {row['agreement']:.2f}, its answer {row['cluster_answer']!r}")
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
    console.print(f"{result.traces_seen} traces in {result.clusters} clusters; cutoff {result.cutoff:%Y-%m-%d %H:%M} "
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


def _answerability_line(row: dict) -> str:
    """What the teacher's refusal decision read: the score, the threshold and how it was set."""
    if row.get("answerability") is None:
        return "answerability: not scored (no evidence, or an imported trace)"
    held = row["answerability"] >= (row["answerability_threshold"] or 0.0)
    return (f"answerability {row['answerability']:.3f} {'>=' if held else '<'} threshold "
            f"{row['answerability_threshold']:.3f} ({row.get('answerability_method') or 'method not recorded'})")


def _moment(value: str, option: str):
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise DistillError(f"{option} {value!r} is not an ISO date or time (for example 2026-10-24)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


@app.command()
def train(dataset: Optional[Path] = typer.Option(None, help="a dataset folder from `distill curate` (default: the latest)"),
          method: Optional[str] = typer.Option(None, help="'full' or 'lora' (default: train.method, full)"),
          max_steps: Optional[int] = typer.Option(None, help="stop after this many steps (default: train.epochs)"),
          base_model: Optional[str] = typer.Option(None, help="'SmolLM2-135M-Instruct' or a local model folder"),
          home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Fine-tune a new student version with TRL on the curated dataset (does not promote it)."""
    from distill.learn.train import train as run_train

    workspace = _workspace(home)
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
    _console().print(f"trained {result.version} on {result.examples} examples in {result.steps} steps "
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
    from distill.jobs.evaluate import load_gold
    from distill.jobs.nightly import nightly as run_nightly

    workspace = _workspace(home)
    console = _console()
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
    from distill.rag.tune import rollback_retriever, switch_retriever, tune_retriever as run_tune

    workspace = _workspace(home)
    console = _console()
    if switch:
        switch_retriever(workspace, workspace.config(), switch)
        console.print(f"retrieving with {switch}; restart services to pick it up")
        return
    if rollback:
        console.print(f"retrieving with {rollback_retriever(workspace, workspace.config())} again; restart services to pick it up")
        return
    rows = None
    if gold:
        from distill.jobs.evaluate import load_gold_rows

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
    from distill.rag.rerank import reranker_off, rollback_reranker, tune_reranker as run_tune

    workspace = _workspace(home)
    console = _console()
    if off:
        version = reranker_off(workspace)
        console.print(f"reranker {version} switched off; restart services to pick it up" if version else
                      "no reranker was on")
        return
    if rollback:
        version = rollback_reranker(workspace)
        state = f"reranking with {version} again" if version else "reranker off again (none was on before the last switch)"
        console.print(f"{state}; restart services to pick it up")
        return
    rows = None
    if gold:
        from distill.jobs.evaluate import load_gold_rows

        rows = {row["query_id"]: row for row in load_gold_rows(gold) if row.get("query_id")}
    result = run_tune(workspace, workspace.config(), rows)
    console.print(("[green]" if result.switched else "[yellow]") +
                  f"{result.version}: {result.pairs} training pairs, {result.held_out} held-out questions "
                  f"(relevance: {result.relevance}); {result.reason}; saved to {result.path}[/]")


@app.command("eval")
def eval_(gold: Optional[Path] = typer.Option(None, help="gold JSONL ({query_id or query, scope, gold_answers, should_refuse?, "
                                                       "gold_doc_ids?, type?}): score against gold as well as the teacher"),
          on_gold: bool = typer.Option(False, "--on-gold", help="evaluate on the gold file's questions instead of the held-out traffic"),
          limit: Optional[int] = typer.Option(None, help="distinct questions at most (default eval.max_queries)"),
          suite: Optional[Path] = typer.Option(None, help="run this regression suite instead (JSON lines: query, scope, "
                                                          "expect_route, expect_answer, expect_refusal); exit 1 if a case fails"),
          home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Score teacher, cache, student and routed system side by side on held-out traffic or a gold file."""
    workspace = _workspace(home)
    console = _console()
    config = workspace.config()
    if suite:
        from distill.jobs.evaluate import load_suite, run_suite

        with _router(workspace, workspace.config({"router": {"log_traces": False}})) as router:
            results = run_suite(router, load_suite(suite), config.eval.success_f1)
        _print_rows([{k: r[k] for k in ("query", "route", "reason", "passed", "problems")} for r in results])
        failed = sum(not r["passed"] for r in results)
        console.print(f"{len(results) - failed} of {len(results)} cases passed")
        raise typer.Exit(1 if failed else 0)
    from distill.jobs.evaluate import run_eval

    run_id, figures = run_eval(workspace, config, gold, on_gold, limit)
    systems = figures["systems"]
    keys = [figures["quality_metric"], "agreement", "citation_correct", "refusal_correct", "served_share",
            "replay_share", "student_share",
            "latency_p50_ms", "latency_p95_ms", "cost_per_success_usd"]
    _print_rows([{"metric": k, **{name: s.get(k) for name, s in systems.items()}} for k in keys])
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

    path = write_report(_workspace(home), run, out)
    print(path)


lake_app = typer.Typer(help="Trace storage beyond one DuckDB file: a DuckLake catalog of Parquet files "
                            "partitioned by day and scope.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")


@lake_app.command("push")
def lake_push(home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Append this workspace's traces that the lake lacks (idempotent: a rerun sends only the rest)."""
    from distill.store.lake import TraceLake
    from distill.store.segments import has_traces
    from distill.store.traces import TraceStore

    workspace = _workspace(home)
    if not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
    lake = workspace.lake(workspace.config())
    console = _console()
    with console.status(f"pushing traces to {lake.catalog}"), TraceStore(workspace.traces_db) as store:
        sent = store.push_to_lake(lake)
    with TraceLake(lake) as reader:
        total, partitions = reader.count(), len(reader.partitions())
    console.print(f"[bold]{sent}[/] traces pushed; the lake holds {total} in {partitions} day/scope partitions "
                  f"under {lake.data_path}")


@lake_app.command("status")
def lake_status(home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Print the lake's traces per day and scope."""
    from distill.store.lake import TraceLake

    workspace = _workspace(home)
    with TraceLake(workspace.lake(workspace.config())) as reader:
        rows = reader.partitions()
    for row in rows:
        typer.echo(f"{row['day']}  {row['scope'] or '-'}  {row['traces']}")


models_app = typer.Typer(help="List, inspect, promote and roll back student versions.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _student(student: Optional[str], workspace) -> str:
    return student or workspace.config().train.student_name


@models_app.command("list")
def models_list(student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """The versions of a student, the promoted one marked."""
    from distill import registry

    workspace = _workspace(home)
    name = _student(student, workspace)
    promoted = registry.current(workspace.models_dir, name)
    rows = []
    for version in registry.versions(workspace.models_dir, name):
        m = registry.manifest(workspace.models_dir, name, version)
        rows.append({"version": version, "current": "*" if version == promoted else "", "created": m["created_at"][:19],
                     "examples": m["examples"], "intents": len(m["clusters"]), "final loss":
                     (m["metrics"]["train_losses"] or [None])[-1], "eval": _eval_short(m.get("eval"))})
    if not rows:
        raise DistillError(f"student '{name}' has no versions in {workspace.models_dir}; run `distill train` first")
    _print_rows(rows)


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

    workspace = _workspace(home)
    print(json.dumps(registry.manifest(workspace.models_dir, _student(student, workspace), version), indent=2))


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="e.g. v0003"),
                   student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                   home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Make a version the one the router serves (atomic)."""
    from distill import registry

    workspace = _workspace(home)
    registry.promote(workspace.models_dir, _student(student, workspace), version)
    _console().print(f"{version} is now current")


@models_app.command("rollback")
def models_rollback(student: Optional[str] = typer.Option(None, help="registry name (default: train.student_name)"),
                    home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Promote the previously promoted version again."""
    from distill import registry

    workspace = _workspace(home)
    version = registry.rollback(workspace.models_dir, _student(student, workspace))
    _console().print(f"rolled back: {version} is now current")


def _router(workspace, config=None, watch: bool = False):
    """The workspace's router (following the workspace's changes with `watch`), saying so when its
    promoted student could not be loaded."""
    from distill.serve.router import Router

    with _console().status("loading the router"):
        router = Router.from_workspace(workspace, config, watch=watch)
    if router.student_problem:
        _console().print(f"[yellow]{router.student_problem}[/]")
    return router


@app.command()
def ask(question: str = typer.Argument(..., help="the question"),
        scope: Optional[str] = typer.Option(None, help="its scope (tenant, product, website)"),
        explain: bool = typer.Option(False, "--explain", help="also print every check's score"),
        home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Answer through the router: replay or the student where it is safe, else RAG."""
    router = _router(_workspace(home))
    router.origin = "ask"
    with router:
        routed = router.answer(question, scope)
    print(routed.answer or "(no answer)")
    console = _console()
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
            console.print("teacher: " + _answerability_line(vars(answer)) +
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

    workspace = _workspace(home)
    config = workspace.config()
    address = f"http://{host or config.serve.host}:{port or config.serve.port}/v1"
    if model:
        from distill.learn.student import ChatModel

        with _console().status(f"loading {model}"):
            chat_model = ChatModel.load(model, workspace.models_dir, config.student.runtime)
        _console().print(f"serving model '{chat_model.name}' on {address}")
        run_serve(create_model_app(chat_model, config), config, host, port)
        return
    if workers > 1:
        _console().print(f"serving {workers} router processes as '{config.serve.model_name}' on {address}")
        serve_workers(workspace.home, config, workers, host, port)
        return
    router = _router(workspace, config, watch=True)
    _console().print(f"serving student {router.version or '(none: everything goes to RAG)'} as "
                     f"'{config.serve.model_name}' on {address}")
    run_serve(create_app(router, config), config, host, port)


@app.command("config")
def show_config(prefix: str = typer.Argument("", help="only the settings whose key starts with this, e.g. teacher or "
                                                     "router.max_error_rate"),
                home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Print the effective settings (defaults, then <home>/distill.toml) as TOML, each with its help; a
    value the workspace changed names its default."""
    from distill.config import as_toml, load_config

    print(as_toml(_workspace(home).config(), prefix, defaults=load_config()))


@app.command()
def sql(query: str = typer.Argument(..., help="SQL to run on the trace store, e.g. \"SELECT route, count(*) FROM traces GROUP BY 1\""),
        output: str = typer.Option("table", "--format", "-f", help="table, json, csv or line (one 'column = value' per line: for wide rows)"),
        write: bool = typer.Option(False, "--write", help="allow statements that change the store (DELETE, UPDATE, ...)"),
        home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Run SQL on the trace store (read-only unless --write) and print the result."""
    from distill.store.segments import has_traces
    from distill.store.traces import user_sql

    if output not in SQL_FORMATS:
        raise DistillError(f"--format must be one of {', '.join(SQL_FORMATS)} (got {output!r})")
    workspace = _workspace(home)
    if not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
    _print_rows(user_sql(workspace.traces_db, query, write=write), output)


SQL_FORMATS = ("table", "json", "csv", "line")


def _print_rows(rows: list[dict], output: str = "table") -> None:
    """Rows as a rich table, JSON (a list of objects), CSV with a header, or DuckDB's line mode."""
    if output == "json":
        print(json.dumps(rows, indent=2, default=str))
    elif output == "csv":
        import csv

        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    elif output == "line":
        width = max((len(k) for k in (rows[0] if rows else {})), default=0)
        print("\n\n".join("\n".join(f"{k.rjust(width)} = {v}" for k, v in row.items()) for row in rows))
    else:
        from rich.console import Console

        from distill.jobs.quickstart import table

        Console().print(table(rows))


@app.command()
def quickstart(home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Run the whole loop on the embedded sample: ingest, collect, curate, nightly, ask, eval, report."""
    from distill.jobs.quickstart import run

    workspace = _workspace(home)
    run(workspace, _console())
    suffix = f" --home {workspace.home}" if home else ""
    print(f"Next: distill sql \"SELECT route, route_reason, count(*) FROM traces GROUP BY ALL\"{suffix}\n"
          f"      distill ask \"How do I export my notes?\" --scope notes --explain{suffix}\n"
          f"      distill serve{suffix}   # OpenAI-compatible, on http://127.0.0.1:8080/v1")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A `DistillWarning` is printed as `warning: ...`, one line; other warnings as Python prints them."""
    if issubclass(category, DistillWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


_python_showwarning = warnings.showwarning


def main() -> None:
    from distill.progress import quiet_library_bars

    warnings.showwarning = _one_line_warning
    quiet_library_bars()  # before transformers or datasets is imported: for cron, lines and no frames
    try:
        app()
    except DistillError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; committed traces are kept, rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # a bug: its traceback goes to a file, the screen gets where to find it
        log = _bug_report(err)
        print(f"error: distill hit a bug ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
              f"the traceback is in {log}; please report it with that file", file=sys.stderr)
        sys.exit(1)


def _bug_report(err: Exception) -> Path:
    """Write the traceback of an unexpected error to $DISTILL_CACHE_DIR/bugs/ (default
    ~/.cache/distill): a bug is shown as a bug, never as the user's error, and keeps its traceback."""
    import os
    import traceback
    from datetime import datetime

    folder = Path(os.environ.get("DISTILL_CACHE_DIR", Path.home() / ".cache" / "distill")) / "bugs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    path.write_text(f"distill {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(err)))
    return path


if __name__ == "__main__":
    main()
