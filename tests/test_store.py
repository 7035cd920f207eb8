import json
import threading
from datetime import datetime, timezone

import duckdb
import pytest

from distill.errors import DistillError
from distill.store.schema import TRACE_MIGRATIONS
from distill.store.traces import TraceStore, user_sql

from conftest import make_trace


def test_append_is_idempotent_by_query_id(tmp_path):
    with TraceStore(tmp_path / "t.duckdb") as store:
        assert store.append([make_trace("a"), make_trace("b")]) == 2
        assert store.append([make_trace("b"), make_trace("c")]) == 1
        assert store.count() == 3
        assert store.answered(["a", "c", "zzz"]) == {"a", "c"}
        (row,) = store.sql("SELECT cited_doc_versions, citations FROM traces WHERE query_id = 'a'")
        assert row["cited_doc_versions"] == [{"doc_id": "notes/export", "version": 1}]


def test_sql_users_can_run(tmp_path):
    with TraceStore(tmp_path / "t.duckdb") as store:
        store.append([make_trace("a"), make_trace("b", refused=True, refusal_reason="no_evidence", answer="")])
        rows = store.sql("SELECT refusal_reason, count(*) AS n FROM traces GROUP BY 1 ORDER BY 1 NULLS FIRST")
        assert rows == [{"refusal_reason": None, "n": 1}, {"refusal_reason": "no_evidence", "n": 1}]
        with pytest.raises(duckdb.BinderException):  # distill's own SQL failing is a bug, not the user's fault
            store.sql("SELECT nope FROM traces")
    with pytest.raises(DistillError, match="^SQL failed: .*nope"):  # the user's is theirs: one line
        user_sql(tmp_path / "t.duckdb", "SELECT nope FROM traces")


def test_migrates_an_older_file_in_place(tmp_path):
    path = tmp_path / "t.duckdb"
    old = TraceStore(path, migrations=TRACE_MIGRATIONS[:1])
    old._con.execute("""INSERT INTO traces SELECT 't1', 'q1', now(), now(), 'notes', 'q', 'a', [], [], [], false,
                        NULL, 'rag', 'collect', 0.5, 0.1, 0.2, NULL, 1.0, true, 1.0, 1.0, 0, 0, 'm', 'extractive'""")
    old.close()
    with TraceStore(path) as store:
        names = [r["name"] for r in store.sql("SELECT name FROM _migrations ORDER BY applied_at, name")]
        assert names == [m.__name__ for m in TRACE_MIGRATIONS]
        assert store.sql("SELECT query_id, collect_run_id FROM traces") == [{"query_id": "q1", "collect_run_id": None}]
        assert store.append([make_trace("q2", collect_run_id="r")]) == 1


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "t.duckdb"
    TraceStore(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO _migrations VALUES ('_m999_from_the_future', now())")
    con.close()
    with pytest.raises(DistillError, match="newer distill"):
        TraceStore(path)


def test_corrupted_file_is_one_clear_error(tmp_path):
    path = tmp_path / "t.duckdb"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DistillError, match="not a readable DuckDB file"):
        TraceStore(path)
    assert path.read_bytes().startswith(b"this is not")  # nothing overwritten


def test_concurrent_appends_lose_nothing(tmp_path):
    with TraceStore(tmp_path / "t.duckdb") as store:
        def writer(worker: int):
            for batch in range(10):
                store.append([make_trace(f"w{worker}-{batch}-{i}") for i in range(20)])

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert store.count() == 4 * 10 * 20


def test_lake_push_is_partitioned_and_idempotent(tmp_path):
    from distill.store.lake import TraceLake
    from distill.workspace import LakeLocation

    lake = LakeLocation(str(tmp_path / "lake" / "t.ducklake"), str(tmp_path / "lake" / "data"))
    days = [datetime(2026, 10, d, 23, 30, tzinfo=timezone.utc) for d in (1, 2)]
    with TraceStore(tmp_path / "t.duckdb") as store:
        store.append([make_trace(f"q{i}", asked_at=days[i % 2], scope=("notes", "billing")[i // 2]) for i in range(4)])
        assert store.push_to_lake(lake) == 4
        assert store.push_to_lake(lake) == 0  # a rerun sends nothing twice
        store.append([make_trace("q9")])
        assert store.push_to_lake(lake) == 1
    files = sorted(p.relative_to(tmp_path / "lake" / "data").parent.as_posix()
                   for p in (tmp_path / "lake" / "data").rglob("*.parquet"))
    assert "main/traces/day=2026-10-01/scope=notes" in files and "main/traces/day=2026-10-02/scope=billing" in files
    # the files are plain Parquet: any reader sees every trace without the catalog
    rows = duckdb.sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/lake/data/**/*.parquet')").fetchone()[0]
    assert rows == 5
    with TraceLake(lake) as reader:
        assert reader.count() == 5
        assert {(str(p["day"]), p["scope"]) for p in reader.partitions()} >= {("2026-10-01", "notes"),
                                                                             ("2026-10-02", "billing")}
        with TraceStore(tmp_path / "t.duckdb") as store:  # the same SQL gives the same rows
            assert reader.curation_input() == store.curation_input()


def test_lake_pull_fills_a_store_and_errors_are_one_line(tmp_path):
    from distill.store.lake import TraceLake
    from distill.workspace import LakeLocation

    lake = LakeLocation(str(tmp_path / "t.ducklake"), str(tmp_path / "data"))
    with pytest.raises(DistillError, match="distill lake push"):
        TraceLake(lake)
    with TraceStore(tmp_path / "a.duckdb") as store:
        store.append([make_trace("a"), make_trace("b")])
        store.push_to_lake(lake)
    with TraceStore(tmp_path / "b.duckdb") as store:
        store.append([make_trace("b")])
        assert store.pull_from_lake(lake) == 1 and store.count() == 2
    (tmp_path / "bad.ducklake").write_text("not a database")
    with pytest.raises(DistillError, match="lake.catalog"):
        TraceLake(LakeLocation(str(tmp_path / "bad.ducklake"), str(tmp_path / "data")))


def test_segments_a_service_writes_are_folded_once_by_whoever_opens_the_store_next(tmp_path):
    import os
    import time

    from distill.store.segments import SegmentLog, segment_folder

    db = tmp_path / "traces" / "traces.duckdb"
    log = SegmentLog(segment_folder(db), rotate_s=3600, rotate_rows=3)
    log.write([{"kind": "trace", "row": dict(make_trace(f"q{i}").__dict__)} for i in range(4)])  # 3 rows: finished
    log.write([{"kind": "shadow_check", "row": {"trace_id": "q0", "student_version": "v1", "intent_id": "c",
                                                 "scope": "billing", "query": "q", "student_answer": "a",
                                                 "teacher_answer": "b", "agreement": 0.0}},
               {"kind": "withdrawal", "row": {"student_version": "v1", "intent_id": "c", "samples": 1,
                                               "agreement": 0.0, "evidence": [{"query": "q"}]}}])
    assert len(list(segment_folder(db).glob("*.jsonl"))) == 1
    with TraceStore(db) as store:  # the open segment belongs to this live process: not folded yet
        assert store.count() == 4 and store.folded == 4
    log.close()
    finished = list(segment_folder(db).glob("*.jsonl"))
    with finished[0].open("a") as torn:
        torn.write('{"kind": "trace", "row": {"query_')  # a crash mid-line
    dead = segment_folder(db) / f"{os.uname().nodename}-999999999-{time.time_ns()}.open"
    dead.write_text(json.dumps({"kind": "trace", "row": dict(make_trace("from-a-dead-process").__dict__)}, default=str))
    with TraceStore(db) as store:
        assert store.count() == 5 and store.withdrawn_intents("v1") == {"c"}
        assert store.sql("SELECT count(*) AS n FROM shadow_checks") == [{"n": 1}]
    assert not list(segment_folder(db).iterdir())
    # folding the same records again (a crash between commit and removal) adds nothing
    again = SegmentLog(segment_folder(db))
    again.write([{"kind": "trace", "row": dict(make_trace("q0").__dict__)}])
    again.close()
    with TraceStore(db) as store:
        assert store.count() == 5 and store.folded == 0


def test_the_trace_record_and_the_migrated_table_have_the_same_columns(tmp_path):
    """One schema: the migrations build the table, `Trace` is its record, and every other list of
    columns (the inserts, the lake, the docs) is derived from those two."""
    from dataclasses import fields

    from distill.store.schema import TRACE_COLUMNS, Trace

    with TraceStore(tmp_path / "t.duckdb") as store:
        table = [r["column_name"] for r in store.sql("SELECT column_name FROM duckdb_columns() WHERE table_name = 'traces'")]
    assert sorted(table) == sorted(f.name for f in fields(Trace)) == sorted(TRACE_COLUMNS)


def test_what_was_a_cluster_is_an_intent_in_old_stores_segments_and_manifests(tmp_path):
    """_m016 renames the tables and columns in place; a segment or a manifest written before it is
    read with today's names, so a service or a student version from before the rename keeps working."""
    from distill.registry import read_manifest
    from distill.store.segments import segment_folder

    db = tmp_path / "traces" / "traces.duckdb"
    db.parent.mkdir()
    old = TraceStore(db, migrations=TRACE_MIGRATIONS[:15])
    old._con.execute("INSERT INTO withdrawn_clusters VALUES ('v1', 'c7', now(), 3, 0.1, '[]')")
    old.close()
    folder = segment_folder(db)
    folder.mkdir()
    row = {**make_trace("from-before").__dict__, "route": "replay", "cluster_id": "c7"}
    del row["intent_id"]
    (folder / "old-1-1.jsonl").write_text(json.dumps({"kind": "trace", "row": row}, default=str) + "\n")
    with TraceStore(db) as store:
        assert store.withdrawn_intents("v1") == {"c7"}
        assert store.sql("SELECT intent_id FROM traces WHERE query_id = 'from-before'") == [{"intent_id": "c7"}]
        tables = {r["table_name"] for r in store.sql("SELECT table_name FROM duckdb_tables()")}
        assert {"intents", "withdrawn_intents"} <= tables and not {"clusters", "withdrawn_clusters"} & tables
    version = tmp_path / "v0001"
    version.mkdir()
    (version / "distill.json").write_text(json.dumps({"clusters": [{"cluster_id": "c7", "wordings": ["q"]}]}))
    assert read_manifest(version)["intents"] == [{"intent_id": "c7", "wordings": ["q"]}]
