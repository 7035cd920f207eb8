"""The open-book student: its training examples, and the router's third route (replay, student, RAG)."""

import json

import pytest

from distill import registry
from distill.jobs.quickstart import SAMPLE
from distill.learn import open_book
from distill.learn.student_gate import CONFIDENCE_FILE, StudentGate
from distill.llm.local import Generation
from distill.rag.corpus import chunk_doc_version
from distill.rag.index import ingest
from distill.serve.router import Router

from conftest import trained_sample

CHUNKS = {
    "kb/reset@v2#0": {"chunk_id": "kb/reset@v2#0", "heading": "Reset", "content_hash": "a",
                      "text": "Open the sign-in page. The reset link is valid for 1 hour and can be used once."},
    "kb/plans@v1#0": {"chunk_id": "kb/plans@v1#0", "heading": "Plans", "content_hash": "b",
                      "text": "Plus costs 8 dollars a month."},
    "kb/2fa@v1#0": {"chunk_id": "kb/2fa@v1#0", "heading": "Two-factor", "content_hash": "c",
                    "text": "Turn on two-factor authentication under Security."},
}
ANSWER = "The reset link is valid for 1 hour and can be used once."


def one(**kwargs):
    settings = dict(query="how long is the reset link valid", answer=ANSWER, cited="kb/reset@v2#0",
                    retrieved=["kb/plans@v1#0", "kb/reset@v2#0", "kb/2fa@v1#0"], chunks=CHUNKS, evidence_chunks=3,
                    max_words=250, no_evidence_share=0.0, no_evidence_target="refusal",
                    template=open_book.DEFAULT_TEMPLATE)
    (example,) = open_book.examples(**{**settings, **kwargs})
    return example


def test_an_open_book_example_carries_the_evidence_in_the_recorded_template_and_cites_the_right_block():
    example = one()
    prompt, completion = example["prompt"][0]["content"], example["completion"][0]["content"]
    assert sorted(example["evidence_ids"]) == sorted(CHUNKS) and example["evidence_kind"] == "evidence"
    number = example["evidence_ids"].index("kb/reset@v2#0") + 1
    assert completion == f"[{number}] {ANSWER}"
    assert f"[{number}] Reset: Open the sign-in page." in prompt and "Question: how long is the reset link valid" in prompt
    assert prompt == open_book.render_prompt(open_book.DEFAULT_TEMPLATE, "how long is the reset link valid",
                                             [CHUNKS[c] for c in example["evidence_ids"]], 250)
    assert one() == example  # the same wording always gets the same shuffle: a rerun writes the same set
    read = open_book.parse_answer(completion, [CHUNKS[c] for c in example["evidence_ids"]])
    assert read.chunk_id == "kb/reset@v2#0" and read.quoted and not read.refused


def test_a_distractor_only_example_trains_the_refusal_and_never_shows_a_copy_of_the_answer():
    copy = {"chunk_id": "kb/faq@v1#0", "heading": "FAQ", "content_hash": "d", "text": f"Q: reset? A: {ANSWER}"}
    example = one(no_evidence_share=1.0, chunks={**CHUNKS, copy["chunk_id"]: copy},
                  retrieved=["kb/faq@v1#0", "kb/plans@v1#0", "kb/reset@v2#0", "kb/2fa@v1#0"])
    assert example["evidence_kind"] == "no_evidence" and example["completion"][0]["content"] == open_book.REFUSAL
    assert set(example["evidence_ids"]) == {"kb/plans@v1#0", "kb/2fa@v1#0"}
    assert "valid for 1 hour" not in example["prompt"][0]["content"]
    raft = one(no_evidence_share=1.0, no_evidence_target="answer")
    assert raft["completion"][0]["content"] == ANSWER  # RAFT's choice, measured against the refusal


def test_the_cited_block_survives_the_word_budget_and_answers_are_read_strictly():
    example = one(max_words=12)
    assert example["evidence_ids"][0] == "kb/reset@v2#0"  # shown first when the budget would cut it off
    shown = [CHUNKS[c] for c in example["evidence_ids"]]
    assert open_book.parse_answer("[1] valid for 2 hours", shown).quoted is False  # not in the block it cites
    assert open_book.parse_answer("[9] The reset link", shown).chunk_id is None  # a block it was not shown
    assert open_book.parse_answer("I don't know.", shown).refused


@pytest.fixture(scope="module")
def open_book_workspace(tmp_path_factory, tiny_lm_dir):
    """The sample collected and curated open-book (the default), a tiny student trained on it and
    promoted: a workspace of its own, since these tests write its confidence evidence."""
    return trained_sample(tmp_path_factory.mktemp("open_book_ws"), tiny_lm_dir, "shadow_share = 0.0\n")


def test_curate_writes_open_book_examples_from_the_chunks_each_trace_read(open_book_workspace):
    import datasets

    from distill.learn.train import latest_dataset

    path = latest_dataset(open_book_workspace)
    meta = json.loads((path / "distill.json").read_text())
    assert meta["student_mode"] == "open_book" and meta["prompt_template"] == open_book.DEFAULT_TEMPLATE
    rows = datasets.load_from_disk(str(path)).to_list()
    answered = [r for r in rows if r["evidence_kind"] == "evidence"]
    assert answered and all(r["citations"][0] in r["evidence_ids"] for r in answered)
    for row in answered:
        number = row["evidence_ids"].index(row["citations"][0]) + 1
        assert row["completion"][0]["content"] == f"[{number}] " + " ".join(row["answer"].split())
        assert row["prompt"][0]["content"].endswith(f"Question: {row['query']}\n" + open_book.DEFAULT_TEMPLATE.split("\n")[-1])
    manifest = registry.manifest(open_book_workspace.models_dir, "student", "v0001")
    assert manifest["student_mode"] == "open_book" and manifest["prompt_template"] == open_book.DEFAULT_TEMPLATE
    assert not any(c["answer"].startswith("[") for c in manifest["intents"])  # replay answers carry no block number


def quoting(router):
    """The promoted tiny student answering as a trained one would: the first shown block, quoted."""
    def answer_batch(questions, max_time=None):
        return [Generation(f"[1] {evidence[0]['text'].split('. ')[0]}", mean_logprob=-0.1, prompt_tokens=300,
                           completion_tokens=12) for _, _, evidence in questions]
    router.student.answer_batch = answer_batch


def calibrate(workspace, student_cost, teacher_cost, score=-0.2, examples=60):
    folder = workspace.models_dir / "student" / "v0001"
    (folder / CONFIDENCE_FILE).write_text(json.dumps({
        "examples": [{"score": score, "error": False}] * examples, "asked": examples,
        "student_cost_usd": student_cost, "teacher_cost_usd": teacher_cost, "teacher_backend": "openai"}))


NOVEL = ("What is the largest attachment I can upload on the Plus plan?", "notes")


def test_a_question_replay_does_not_cover_goes_to_the_student_only_when_confident_and_cheaper(open_book_workspace):
    calibrate(open_book_workspace, student_cost=1e-6, teacher_cost=1e-4)
    with Router.from_workspace(open_book_workspace, log=False, watch=False) as router:
        quoting(router)
        routed = router.answer(*NOVEL)
        assert routed.route == "student" and routed.reason == "served", routed.checks
        assert routed.checks["replay"] == "coverage" and routed.checks["quoted"] is True
        assert routed.checks["student_score"] == -0.1 and routed.checks["student_threshold"] == -0.2
        assert len(routed.citations) == 1 and routed.citations[0] in routed.evidence_ids
        trace = router._trace(routed)
        assert trace.route == "student" and trace.backend == "open_book" and trace.retrieved == routed.evidence_ids
        router.gate.threshold = -0.05  # a shadow disagreement above this answer's score
        assert router.answer(*NOVEL).reason == "confidence"
    calibrate(open_book_workspace, student_cost=1e-4, teacher_cost=1e-6)
    with Router.from_workspace(open_book_workspace, log=False, watch=False) as router:
        quoting(router)
        routed = router.answer(*NOVEL)
        assert routed.route == "rag" and routed.reason == "teacher_cheaper", routed.checks
        assert routed.checks["student_cost_usd"] > routed.checks["teacher_cost_usd"]
    (open_book_workspace.models_dir / "student" / "v0001" / CONFIDENCE_FILE).unlink()
    with Router.from_workspace(open_book_workspace, log=False, watch=False) as router:
        uncalibrated = router.answer(*NOVEL)  # no student route at all: replay's reason stands
        assert uncalibrated.reason == "coverage" and uncalibrated.checks["student"] == "uncalibrated"


def test_a_replay_is_never_labelled_student_and_unanswerable_questions_never_reach_the_student(open_book_workspace):
    calibrate(open_book_workspace, student_cost=1e-6, teacher_cost=1e-4)
    manifest = registry.manifest(open_book_workspace.models_dir, "student", "v0001")
    intent = next(c for c in manifest["intents"] if c["wordings"] and c["citations"])
    with Router.from_workspace(open_book_workspace, log=False, watch=False) as router:
        quoting(router)
        routed = router.answer(intent["wordings"][0], intent["scope"])
        assert routed.route == "replay" and routed.answer == intent["answer"]
        assert router._trace(routed).backend == "replay"
        off_topic = router.answer("What is the airspeed velocity of an unladen swallow?", "notes")
        assert off_topic.route == "rag" and off_topic.reason == "not_answerable", off_topic.checks


def test_a_changed_document_stops_replay_and_the_student_answers_from_the_new_version(open_book_workspace, tmp_path):
    calibrate(open_book_workspace, student_cost=1e-6, teacher_cost=1e-4)
    manifest = registry.manifest(open_book_workspace.models_dir, "student", "v0001")
    intent = next(c for c in manifest["intents"] if c["wordings"] and c["cited_doc_versions"])
    doc_id = intent["cited_doc_versions"][0]["doc_id"]
    docs = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").read_text().splitlines() if line.strip()]
    changed = next(d for d in docs if d["id"] == doc_id)
    changed = {**changed, "version": changed.get("version", 1) + 1,
               "text": changed["text"] + "\n\nThis page was reviewed in December 2026."}
    (tmp_path / "changed.jsonl").write_text(json.dumps(changed) + "\n")
    config = open_book_workspace.config()
    ingest(open_book_workspace, tmp_path / "changed.jsonl", config)
    with Router.from_workspace(open_book_workspace, log=False, watch=False) as router:
        quoting(router)
        routed = router.answer(intent["wordings"][0], intent["scope"])
    assert routed.checks["replay"] == "stale" and routed.route == "student", routed.checks
    (cited,) = routed.citations
    (version,) = routed.cited_doc_versions
    assert chunk_doc_version(cited) == (version["doc_id"], version["version"])
    assert router.latest[version["doc_id"]] == version["version"]  # read now: never a superseded version


def test_the_gate_threshold_bounds_the_expected_error_and_learns_from_shadow_checks():
    class Prices:
        teacher_pricing, prompt_price_per_million, completion_price_per_million, local_price_per_hour = "api", 0.15, 0.6, 0.1

    examples = [{"score": -0.1 * i, "error": i >= 60} for i in range(100)]
    gate = StudentGate({"examples": examples, "student_cost_usd": 1e-6, "teacher_cost_usd": 1e-4}, 0.02, Prices, "openai")
    assert gate.threshold == pytest.approx(-5.9)  # 60 right answers above it, the first wrong one below
    gate.disagreed(-1.0)
    assert gate.threshold == pytest.approx(-1.0, abs=1e-5)
    gate.agreed()
    assert -5.9 < gate.threshold < -1.0
    assert not gate.teacher_cheaper()
    gate_local = StudentGate({"examples": examples, "student_cost_usd": 1e-6, "teacher_cost_usd": 1e-4}, 0.02, Prices,
                             "extractive")
    for _ in range(60):
        gate_local.saw_teacher(latency_ms=12, prompt_tokens=400, completion_tokens=30)  # billed by its time here
    assert gate_local.teacher_cheaper()
