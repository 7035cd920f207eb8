"""Commands for what goes in: documents (`ingest`), the teacher's answers (`collect`, `teacher`),
others' traces (`import`), query logs (`traffic`), the store's SQL (`sql`) and the lake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from distill.cli.base import HOME_HELP, SQL_FORMATS, app, print_rows, stderr_console, workspace_at
from distill.errors import DistillError


@app.command()
def ingest(path: Path = typer.Argument(..., help="a folder of .md/.txt files, a documents .jsonl, or a dataset file"),
           format: str = typer.Option("auto", "--format", "-f", help="auto, folder, jsonl, squad or faq-versions"),
           version: Optional[int] = typer.Option(None, help="with --format faq-versions: which version to ingest"),
           home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Chunk documents and add them to the hybrid (FAISS + BM25) index; fit the teacher's refusal threshold on them."""
    from distill.rag.index import ingest as run_ingest
    from distill.rag.teacher import ensure_answerability_fitted

    workspace = workspace_at(home)
    console = stderr_console()
    config = workspace.config()
    with console.status(f"ingesting {path}"):
        report = run_ingest(workspace, path, config, fmt=format, version=version, progress=False)
    with console.status("fitting the answerability threshold on the documents"):
        calibration = ensure_answerability_fitted(workspace, config)
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

    workspace = workspace_at(home)
    overrides = {"teacher": {"backend": backend}} if backend else {}
    if engine:
        overrides["collect"] = {"engine": engine}
    config = workspace.config(overrides)
    console = stderr_console()
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

    workspace = workspace_at(home)
    console = stderr_console()
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
    from distill.rag.teacher import ensure_answerability_fitted
    from distill.store.segments import has_traces
    from distill.store.traces import TraceStore

    workspace = workspace_at(home)
    config = workspace.config()
    console = stderr_console()
    meta = dense_meta(workspace)
    if meta is None:
        raise DistillError(f"no corpus in {workspace.index_dir}; run `distill ingest PATH` first")
    if refit:
        with console.status("fitting the answerability threshold on the documents"):
            ensure_answerability_fitted(workspace, config, force=True)
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
    stderr_console().print(f"{report.queries} queries over {report.intents} intents ({report.distinct_queries} distinct "
                     f"wordings; top 10 intents = {report.top10_share:.0%} of traffic) -> {report.queries_file}, "
                     f"gold answers -> {report.gold_file}")


lake_app = typer.Typer(help="Trace storage beyond one DuckDB file: a DuckLake catalog of Parquet files "
                            "partitioned by day and scope.", no_args_is_help=True)
app.add_typer(lake_app, name="lake")


@lake_app.command("push")
def lake_push(home: Optional[Path] = typer.Option(None, help=HOME_HELP)) -> None:
    """Append this workspace's traces that the lake lacks (idempotent: a rerun sends only the rest)."""
    from distill.store.lake import TraceLake
    from distill.store.segments import has_traces
    from distill.store.traces import TraceStore

    workspace = workspace_at(home)
    if not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
    lake = workspace.lake(workspace.config())
    console = stderr_console()
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

    workspace = workspace_at(home)
    with TraceLake(workspace.lake(workspace.config())) as reader:
        rows = reader.partitions()
    for row in rows:
        typer.echo(f"{row['day']}  {row['scope'] or '-'}  {row['traces']}")


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
    workspace = workspace_at(home)
    if not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
    print_rows(user_sql(workspace.traces_db, query, write=write), output)
