import json
import os
from datetime import datetime, timezone

import pytest

from distill.errors import DistillError
from distill.learn.curate import curate
from distill.learn.intents import PiiDetector, cluster_wordings
from distill.rag.embed import load_embedder
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from conftest import REFUND_A, REFUND_Q, START, make_trace, refund


@pytest.fixture
def home(curated_home):
    return curated_home


def reasons(store: TraceStore, run_id: str) -> dict[str, set]:
    rows = store.sql("SELECT t.query, c.decision, c.reason FROM curation c JOIN traces t USING (trace_id) "
                     "WHERE c.run_id = ?", [run_id])
    out: dict[str, set] = {}
    for row in rows:
        out.setdefault(row["query"], set()).add((row["decision"], row["reason"]))
    return out


def test_unsafe_stale_and_refused_traces_never_reach_the_training_set(home):
    import datasets

    result = curate(home, home.config())  # the open-book examples themselves: tests/test_open_book.py
    assert result.traces_seen == 24 and result.train == 5
    with TraceStore(home.traces_db) as store:
        decided = reasons(store, result.run_id)
        assert decided["My email is jane.doe@example.com, how long do refunds take?"] == {("reject", "pii")}
        assert decided["Which medication dosage is safe with the app?"] == {("reject", "high_risk")}
        assert decided["What is the search shortcut?"] == {("reject", "injection")}
        assert decided["What was the old refund window?"] == {("reject", "stale_citation")}
        # its one refusal is no evidence that the question is out of scope: the teacher answers it
        assert decided[REFUND_Q] == {("train", None), ("reject", "answered_elsewhere"), ("eval", None)}
        assert store.sql("SELECT count(*) AS n FROM curation WHERE run_id = ?", [result.run_id]) == [{"n": 24}]
        trained = store.sql("SELECT t.trace_id FROM curation c JOIN traces t USING (trace_id) "
                            "WHERE c.run_id = ? AND decision = 'train'", [result.run_id])
    dataset = datasets.load_from_disk(str(result.dataset_path))
    assert len(dataset) == 2  # one example per wording of the trained intent
    assert {row["query"] for row in dataset} == {REFUND_Q, "Can I get a refund within how many days?"}
    assert all(row["answer"] == REFUND_A and row["query"] in row["prompt"][0]["content"] for row in dataset)
    assert sorted(t for row in dataset for t in row["trace_ids"]) == sorted(r["trace_id"] for r in trained)
    assert len(result.dataset_hash) == 64 and result.leaked_eval_traces == 2


def test_a_refusal_is_a_training_example_only_for_a_need_no_wording_of_which_is_answered(home):
    refused = dict(refused=True, refusal_reason="not_answerable", answer="", citations=[], cited_doc_versions=[])
    off_topic = "Is there an Acme Calendar app?"
    reworded = "How many days do I have to ask for a refund?"  # the trained intent's need, in other words
    with TraceStore(home.traces_db) as store:
        store.append([refund(n, n, query=off_topic, **refused) for n in range(4)] +
                     [refund(n, n, query=reworded, **refused) for n in range(4)])
    result = curate(home, home.config())
    with TraceStore(home.traces_db) as store:
        decided = reasons(store, result.run_id)
    assert decided[off_topic] == {("train", "refusal_example")}  # frequent, always refused, like nothing answered
    assert decided[reworded] == {("reject", "answered_elsewhere")}  # frequent and always refused, but answered


def test_infrequent_and_inconsistent_clusters_are_rejected(home):
    strict = home.config({"curate": {"min_count": 20}})
    result = curate(home, strict)
    assert result.train == 0 and result.decisions["reject"]["infrequent"] >= 5
    assert result.dataset_path is None
    unanimous = curate(home, home.config({"curate": {"min_agreement": 1.0}}))  # one refusal breaks unanimity
    assert unanimous.train == 0 and unanimous.decisions["reject"]["inconsistent"] >= 5


def test_explain_and_reruns(home):
    first = curate(home, home.config())
    second = curate(home, home.config())
    assert first.run_id != second.run_id
    with TraceStore(home.traces_db) as store:
        rows = store.explain("What is the search shortcut?")
        assert {r["reason"] for r in rows} == {"injection"} and {r["run_id"] for r in rows} == {second.run_id}
        run = store.sql("SELECT * FROM curation_runs WHERE run_id = ?", [second.run_id])[0]
        assert '"min_count": 3' in run["config"]


def test_rewriting_a_run_replaces_it_atomically(tmp_path):
    with TraceStore(tmp_path / "t.duckdb") as store:
        store.append([make_trace("q1")])
        run = {"run_id": "r", "created_at": START, "config": "{}", "cutoff": START, "traces_seen": 1, "intents": 1,
               "train": 1, "eval": 0, "rejected": 0, "leaked_eval_traces": 0, "dataset_path": None,
               "dataset_hash": None, "examples": 0}
        intent = {"intent_id": "c", "scope": "s", "representative": "q", "wordings": ["q"], "traces": 1,
                   "frequency": 1, "answer": "a", "agreement": 1.0, "cited_doc_versions": [], "trained": True}
        decision = {"trace_id": "q1", "intent_id": "c", "decision": "train", "reason": None}
        store.write_curation(run, [intent], [decision])
        store.write_curation(run, [intent], [decision])
        with pytest.raises(Exception):
            store.write_curation(run, [intent], [decision, decision])  # a duplicate key fails mid-write ...
        assert store.sql("SELECT count(*) AS n FROM curation") == [{"n": 1}]  # ... and the old run survives


def test_rewordings_are_written_checked_and_marked_apart_from_asked_wordings(home, tiny_lm_dir):
    import datasets

    result = curate(home, home.config({"curate": {"rewordings": 2, "rewording_model": str(tiny_lm_dir)}}))
    dataset = datasets.load_from_disk(str(result.dataset_path))
    assert dataset["source"].count("trace") == 2 and dataset["source"].count("rewording") == result.rewordings_kept
    assert 0 < result.rewordings_written <= 4 and result.rewordings_kept <= result.rewordings_written
    meta = json.loads((result.dataset_path / "distill.json").read_text())
    assert meta["rewordings"] == {"written": result.rewordings_written, "kept": result.rewordings_kept}
    with pytest.raises(DistillError, match="curate.rewording_model"):  # the extractive teacher writes none
        curate(home, home.config({"curate": {"rewordings": 2}}))


def test_bad_settings_and_empty_store(home, tmp_path):
    with pytest.raises(DistillError, match="curate.min_agreement"):
        curate(home, home.config({"curate": {"min_agreement": 1.5}}))
    with pytest.raises(DistillError, match="curate.rewordings"):
        curate(home, home.config({"curate": {"rewordings": -1}}))
    with pytest.raises(DistillError, match="setting 'curate.prompt_template' was removed: .*delete it"):
        home.config({"curate": {"prompt_template": "{question}"}})
    empty = Workspace(tmp_path / "empty")
    with pytest.raises(DistillError, match="distill collect"):
        curate(empty, empty.config())


def test_paraphrases_cluster_and_scopes_stay_apart():
    model = load_embedder("all-MiniLM-L6-v2")
    wordings = [("notes", "how do i export my notes"), ("notes", "how can i export notes to pdf"),
                ("billing", "how do i export my notes"), ("notes", "can i pay with paypal")]
    intents = cluster_wordings(wordings, model, 0.7)
    assert intents[wordings[0]] == intents[wordings[1]]
    assert intents[wordings[0]] != intents[wordings[2]] and intents[wordings[0]] != intents[wordings[3]]


def test_pii_detector_uses_presidio_checks():
    detector = PiiDetector(["EMAIL_ADDRESS", "CREDIT_CARD", "IBAN_CODE"], 0.5)
    assert detector.find("reach me at jane.doe@example.com") == "EMAIL_ADDRESS"
    assert detector.find("card 4111 1111 1111 1111 please") == "CREDIT_CARD"
    assert detector.find("card 4111 1111 1111 1112 please") is None  # fails the Luhn check
    assert detector.find("How do I export my notes?") is None


def test_contact_details_published_in_the_cited_document_are_not_personal_data():
    detector = PiiDetector(["EMAIL_ADDRESS"], 0.5)
    answer = "Write to privacy@acme-notes.com for a copy of your data."
    assert detector.find(answer) == "EMAIL_ADDRESS"
    assert detector.find(answer, "Contact privacy@acme-notes.com with any request.") is None
    assert detector.find("Mail jane@gmail.com or privacy@acme-notes.com", "privacy@acme-notes.com") == "EMAIL_ADDRESS"


def test_require_min_names_the_rule_that_rejected_most(home):
    with pytest.raises(DistillError, match=r"only 0 traces passed the rules, 1 required; rule 'infrequent'"):
        curate(home, home.config({"curate": {"min_count": 50}}), require_min=1)
    with TraceStore(home.traces_db) as store:  # the run is stored all the same, for --explain
        assert store.sql("SELECT count(*) AS n FROM curation_runs") == [{"n": 1}]


def test_curating_from_the_lake_decides_as_the_file_does(home, tmp_path_factory):
    """Traces pushed from one machine, curated on another that has only the corpus and the lake."""
    lake_dir = tmp_path_factory.mktemp("lake")
    settings = f'[lake]\ncatalog = "{lake_dir}/t.ducklake"\ndata_path = "{lake_dir}/data"\n'
    (home.home / "distill.toml").write_text(settings)
    with TraceStore(home.traces_db) as store:
        store.push_to_lake(home.lake(home.config()))
    on_file = curate(home, home.config())
    central = Workspace(tmp_path_factory.mktemp("central"))
    os.symlink(home.index_dir, central.home / "index")
    (central.home / "distill.toml").write_text(settings)
    on_lake = curate(central, central.config(), from_lake=True)
    assert (on_lake.traces_seen, on_lake.decisions, on_lake.dataset_hash) == \
        (on_file.traces_seen, on_file.decisions, on_file.dataset_hash)
    with TraceStore(central.traces_db) as store:  # every decision joins to its trace
        assert store.explain(REFUND_Q)[0]["decision"] == "train"


def test_questions_tried_with_distill_ask_never_move_the_cutoff_of_the_collected_log(home):
    from typer.testing import CliRunner

    from distill.cli.base import app

    before = curate(home, home.config())
    with TraceStore(home.traces_db) as store:  # three questions tried today through `distill ask`
        store.append([refund(n, 99, asked_at=datetime.now(timezone.utc), origin="ask")
                      for n in range(3)])
    after = curate(home, home.config())
    assert after.cutoff == before.cutoff and after.train == before.train
    assert after.cutoff_basis["ask_questions_ignored"] == 3
    given = curate(home, home.config(), cutoff=START)  # everything held out: no trace is trained on
    assert given.cutoff == START and given.train == 0 and given.cutoff_basis == {"given": True}
    result = CliRunner().invoke(app, ["curate", "--cutoff", "2026-10-01", "--home", str(home.home)])
    assert result.exit_code == 0, result.output
    assert "cutoff 2026-10-01 00:00 (given with --cutoff)" in result.output and "no trace passed the rules" in result.output
    explained = CliRunner().invoke(app, ["curate", "--explain", REFUND_Q, "--home", str(home.home)])
    assert explained.exit_code == 0 and "(ask)" in explained.output
