import json
import os

import pytest
from typer.testing import CliRunner

from distill.cli.base import app

from conftest import make_trace, run_cli

runner = CliRunner()


def test_help_lists_the_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("ingest", "collect", "traffic", "curate", "train", "nightly", "ask", "serve", "models", "sql",
                    "eval", "report", "quickstart"):
        assert command in result.output


def test_user_errors_are_one_line_without_traceback(tmp_path):
    for args in (["ingest", str(tmp_path / "missing")], ["collect", str(tmp_path / "q.jsonl")],
                 ["sql", "SELECT 1"], ["nightly"], ["nightly", "--gold", str(tmp_path / "gold.jsonl")], ["ask", "hello"], ["serve"],
                 ["eval"], ["report"], ["eval", "--suite", str(tmp_path / "suite.jsonl")]):
        result = run_cli(*args, home=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_quickstart_runs_the_whole_loop_and_is_idempotent(tmp_path, tiny_lm_dir):
    (tmp_path / "distill.toml").write_text(  # a tiny student keeps this fast; test_slow runs the real one
        f'[train]\nbase_model = "{tiny_lm_dir}"\nmax_steps = 2\nbatch_size = 4\n[student]\nmax_new_tokens = 4\n')
    first = run_cli("quickstart", "--home", str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert "skipped sources {'community-forum': 1}" in first.stderr
    assert "notes/keyboard-shortcuts" in first.stderr  # the injection chunk is flagged
    queries = sum(1 for _ in open(os.path.join(os.path.dirname(__import__("distill").__file__), "sample", "queries.jsonl")))
    assert f"{queries} new traces" in first.stderr and "training examples" in first.stderr
    assert "promoted: v0001" in first.stderr and "serving: v0001" in first.stderr
    assert "high_risk" in first.stderr and "injection" in first.stderr  # routed questions, with their reasons
    report = [line.split("report: ")[1] for line in first.stderr.splitlines() if line.startswith("report: ")]
    assert report and os.path.exists(report[0].strip())
    second = run_cli("quickstart", "--home", str(tmp_path))
    assert second.returncode == 0 and "0 new traces" in second.stderr and f"{queries} already stored" in second.stderr
    assert "the training set is unchanged since v0001" in second.stderr
    counted = run_cli("sql", "SELECT count(*) AS n FROM traces WHERE route_reason = 'collect'", home=tmp_path)
    assert counted.returncode == 0 and str(queries) in counted.stdout
    explained = run_cli("curate", "--explain", "Can I store patient medical records in Acme Notes?", home=tmp_path)
    assert explained.returncode == 0 and "reject (high_risk)" in explained.stderr
    unknown = run_cli("curate", "--explain", "no such trace", home=tmp_path)
    assert unknown.returncode == 2 and "no curated trace matches" in unknown.stderr


@pytest.mark.slow
def test_collect_reports_bad_lines_and_strict_stops(corpus_workspace, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query": "Can I pay with PayPal?", "scope": "billing"}) + "\nnot json\n")
    home = tmp_path / "ws"
    home.mkdir()
    os.symlink(corpus_workspace.home / "index", home / "index")
    result = run_cli("collect", str(path), home=home)
    assert result.returncode == 0 and "q.jsonl:2: not valid JSON (skipped)" in result.stderr
    strict = run_cli("collect", str(path), "--strict", home=home)
    assert strict.returncode == 2 and "q.jsonl:2: not valid JSON" in strict.stderr
    (tmp_path / "bad.jsonl").write_text("not json\n{\"scope\": \"billing\"}\n")
    useless = run_cli("collect", str(tmp_path / "bad.jsonl"), home=home)
    assert useless.returncode == 2 and "no line of" in useless.stderr and "2 bad" in useless.stderr


def test_sql_is_read_only_unless_asked_and_prints_wide_rows_in_other_formats(tmp_path):
    from distill.store.traces import TraceStore

    with TraceStore(tmp_path / "traces" / "traces.duckdb") as store:
        store.append([make_trace(f"q{n}", query=f"question {n}?") for n in range(3)])
    deleted = run_cli("sql", "DELETE FROM traces", home=tmp_path)
    assert deleted.returncode == 2 and "read-only" in deleted.stderr and "--write" in deleted.stderr
    assert len(deleted.stderr.strip().splitlines()) == 1
    rows = json.loads(run_cli("sql", "SELECT query_id, query FROM traces ORDER BY 1", "--format", "json",
                              home=tmp_path).stdout)
    assert rows == [{"query_id": f"q{n}", "query": f"question {n}?"} for n in range(3)]  # nothing was deleted
    csv_out = run_cli("sql", "SELECT query_id, route FROM traces ORDER BY 1", "-f", "csv", home=tmp_path).stdout
    assert csv_out.splitlines()[0] == "query_id,route" and len(csv_out.splitlines()) == 4
    line = run_cli("sql", "SELECT * FROM traces WHERE query_id = 'q0'", "--format", "line", home=tmp_path).stdout
    assert "query_id = q0" in line and len(line.splitlines()) > 30  # every column on its own line
    assert run_cli("sql", "SELECT 1", "--format", "xml", home=tmp_path).returncode == 2
    written = run_cli("sql", "DELETE FROM traces WHERE query_id = 'q0'", "--write", home=tmp_path)
    assert written.returncode == 0, written.stderr
    assert "2" in run_cli("sql", "SELECT count(*) AS n FROM traces", home=tmp_path).stdout


def test_config_prints_the_effective_settings_as_toml(tmp_path):
    (tmp_path / "distill.toml").write_text("[serve]\nport = 9000\n")
    shown = run_cli("config", "serve", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "port = 9000" in shown.stdout and "(default 8080)" in shown.stdout
    assert "[teacher]" not in shown.stdout


def test_a_bug_is_one_line_naming_the_file_with_its_traceback(monkeypatch, tmp_path, capsys):
    import distill.cli.base

    def broken():
        raise KeyError("internal")

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(distill.cli.base, "app", broken)
    with pytest.raises(SystemExit) as exited:
        distill.cli.main()
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: distill hit a bug (KeyError") and "please report it" in line
    (report,) = (tmp_path / "bugs").iterdir()
    assert report.name in line and "Traceback" in report.read_text() and "in broken" in report.read_text()
