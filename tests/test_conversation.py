import doctest
import json

import pytest
from fastapi.testclient import TestClient

import distill.rag.conversation
from distill.errors import DistillError
from distill.rag.conversation import MAX_CONVERSATION_MESSAGES, depends_on_conversation, standalone_turn
from distill.serve.app import create_app
from distill.serve.router import Router
from distill.store.traces import TraceStore

from conftest import REFUND_Q

PASSWORD = [{"role": "user", "content": "How do I reset my password?"},
            {"role": "assistant", "content": "Open Settings, choose Reset password, and we email you a reset link."}]
IPHONE = [{"role": "user", "content": "I subscribed on my iPhone."},
          {"role": "assistant", "content": "What would you like to do?"}]


def test_the_docstring_examples_run():
    assert doctest.testmod(distill.rag.conversation).failed == 0


@pytest.mark.parametrize("message, signal", [
    ("And how long is the link valid?", "follow_up_opening"),
    ("What about on my phone?", "follow_up_opening"),
    ("Can my pet get it?", "refers_back"),
    ("How much does that cost?", "refers_back"),
    ("How do I cancel?", "no_object"),
    ("How do I export my notes to PDF?", None),
    ("Is it safe to go hunting, fishing or wildlife viewing?", None),  # "it" refers to nothing
    ("I want to get rid of my facebook account, how do I do it?", None),  # "it" is named in the message
    ("What is a notebook?", None),
    ("Can I get a refund?", None),
])
def test_a_message_depends_on_the_conversation_only_when_it_cannot_stand_alone(message, signal):
    assert depends_on_conversation(message) == signal


def test_a_first_turn_and_a_self_contained_follow_up_are_left_alone():
    first = standalone_turn("How do I reset my password?", [{"role": "system", "content": "be brief"}])
    assert (first.method, first.question, first.conversation_hash) == ("none", "How do I reset my password?", None)
    other = standalone_turn("How do I export my notes?", PASSWORD)
    assert other.method == "none" and other.question == "How do I export my notes?" and other.standalone
    assert other.conversation_hash == standalone_turn("Anything?", PASSWORD).conversation_hash  # same conversation


def test_the_rule_joins_what_the_earlier_user_turns_named_and_is_never_standalone():
    turn = standalone_turn("And how long is the link valid?", PASSWORD)
    assert turn.method == "rules" and not turn.standalone
    assert turn.question == "And how long is the link valid? reset password"
    assert turn.message == "And how long is the link valid?" and turn.signal == "follow_up_opening"


def test_a_longer_message_that_refers_back_is_a_follow_up_only_when_the_conversation_moves_retrieval():
    long = "I'd like to save it on my computer, how can I do this without the browser?"
    asked = []

    def shifted(alone, joined):
        asked.append((alone, joined))
        return True

    assert depends_on_conversation(long) is None  # it names enough of its own for the word rules
    turn = standalone_turn(long, PASSWORD, shifted=shifted)
    assert (turn.method, turn.signal) == ("rules", "evidence_shift") and asked == [(long, turn.question)]
    assert standalone_turn(long, PASSWORD, shifted=lambda alone, joined: False).method == "none"
    asked.clear()
    assert standalone_turn("How do I export my notes to PDF?", PASSWORD, shifted=shifted).method == "none"
    assert not asked  # nothing refers back: retrieval is not asked


def test_an_llm_rewrite_counts_only_when_it_is_one_question_that_no_longer_refers_back(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from distill.rag.generators import TransformersGenerator

    good = standalone_turn("How long is it valid?", PASSWORD,
                           condense=lambda messages: "How long is the password reset link valid?")
    assert (good.method, good.question) == ("llm", "How long is the password reset link valid?") and good.standalone
    drifted = standalone_turn("How long is it valid?", PASSWORD, agrees=lambda rewritten, joined: False,
                              condense=lambda messages: "How long is the password reset link valid?")
    assert drifted.method == "rules"  # retrieval finds another document for it than for the rule's question
    for reply in ("How long is it valid?", "The link is valid.\nIt expires.", "What is the weather on Mars?",
                  "The password reset link is valid for one hour."):
        assert standalone_turn("How long is it valid?", PASSWORD, condense=lambda messages: reply).method == "rules"

    def down(messages):
        raise TimeoutError("the LLM is down")

    assert standalone_turn("How long is it valid?", PASSWORD, condense=down).method == "rules"
    tiny = TransformersGenerator(AutoModelForCausalLM.from_pretrained(str(tiny_lm_dir)),
                                 AutoTokenizer.from_pretrained(str(tiny_lm_dir)), "tiny", 8)
    assert standalone_turn("How long is it valid?", PASSWORD, condense=tiny.chat).method in ("rules", "llm")


def test_a_conversation_too_long_or_malformed_is_one_clear_error():
    with pytest.raises(DistillError, match="over the 64 a follow-up is read with"):
        standalone_turn("And then?", PASSWORD * (MAX_CONVERSATION_MESSAGES // 2 + 1))
    with pytest.raises(DistillError, match="list of {role, content}"):
        standalone_turn("And then?", [{"content": "no role"}])


@pytest.fixture(scope="module")
def sample_corpus(tmp_path_factory):
    """The embedded sample's documents, ingested; no student (every turn is RAG's)."""
    from distill.jobs.quickstart import SAMPLE
    from distill.rag.index import ingest
    from distill.workspace import Workspace

    home = tmp_path_factory.mktemp("conversation_ws")
    (home / "distill.toml").write_text('[corpus]\nallowed_sources = ["help-center", "policies"]\n')
    workspace = Workspace(home)
    ingest(workspace, SAMPLE / "corpus.jsonl", workspace.config())
    return workspace


def test_the_two_quickstart_conversations_are_answered_in_their_conversation(sample_corpus):
    router = Router.from_workspace(sample_corpus)
    with TestClient(create_app(router, sample_corpus.config())) as client:
        def ask(history, message):
            body = {"model": "distill", "messages": history + [{"role": "user", "content": message}]}
            response = client.post("/v1/chat/completions", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        link = ask(PASSWORD, "And how long is the link valid?")
        assert "valid for 1 hour" in link["choices"][0]["message"]["content"]
        assert (link["distill"]["route"], link["distill"]["reason"], link["distill"]["rewrite"]) == \
            ("rag", "conversation", "rules")
        cancel = ask(IPHONE, "How do I cancel?")
        assert "App Store" in cancel["choices"][0]["message"]["content"], cancel
        alone = ask([], "How do I cancel?")  # asked alone, the web steps: the conversation is what changed it
        assert "App Store" not in alone["choices"][0]["message"]["content"] and alone["distill"]["rewrite"] is None
        other = ask(PASSWORD, "How do I export my notes?")
        assert other["distill"]["rewrite"] == "none" and other["distill"]["question"] == "How do I export my notes?"
        too_long = client.post("/v1/chat/completions", json={"model": "distill", "messages": PASSWORD * 33 + [
            {"role": "user", "content": "And then?"}]})
        assert too_long.status_code == 400 and "over the 64" in too_long.json()["error"]["message"]
        assert client.post("/v1/chat/completions", json={"model": "distill", "messages": PASSWORD[1:]}).status_code == 400
    with TraceStore(sample_corpus.traces_db) as store:
        rows = store.sql("SELECT query, raw_message, rewrite_method, conversation_hash FROM traces "
                         "WHERE raw_message = 'And how long is the link valid?'")
    assert rows == [{"query": "And how long is the link valid? reset password",
                     "raw_message": "And how long is the link valid?", "rewrite_method": "rules",
                     "conversation_hash": standalone_turn("x", PASSWORD).conversation_hash}]


def test_the_llm_reads_a_rule_rewrite_as_the_message_after_its_earlier_turns(sample_corpus):
    with Router.from_workspace(sample_corpus, log=False, watch=False) as router:
        routed = router.answer("How do I cancel?", None, IPHONE)
    assert routed.turn.method == "rules" and routed.turn.earlier == ("I subscribed on my iPhone.",)
    shown = routed.teacher_answer.prompt[-1]["content"]
    assert shown.endswith("Earlier question: I subscribed on my iPhone.\nQuestion: How do I cancel?\n"
                          "Answer with a short quote:")
    assert routed.teacher_answer.query == routed.turn.question  # retrieval and the checks read the joined words


def test_a_turn_asks_retrieval_once_for_each_text_it_reads(sample_corpus, monkeypatch):
    import collections
    import threading

    from distill.serve.routes import conversation_turn

    router = Router.from_workspace(sample_corpus, log=False, watch=False)
    searched, search = collections.Counter(), router.teacher.retriever.search

    def counted(text, scope, **kwargs):
        searched[text] += 1
        return search(text, scope, **kwargs)

    monkeypatch.setattr(router.teacher.retriever, "search", counted)
    message = "Once I have it, how many hours can I keep using it before it runs out?"
    turn = conversation_turn(router.teacher, threading.Lock(), message, PASSWORD, None,
                             condense=lambda messages: "How long is the password reset link valid?")
    assert (turn.method, turn.signal) == ("llm", "evidence_shift")  # the shift read the rule's question, and so did agrees
    assert searched == {message: 1, f"{message} reset password": 1, turn.question: 1}
    router.close()


def test_a_follow_up_that_reads_like_a_trained_wording_is_never_replayed_out_of_its_conversation(routed_workspace):
    with Router.from_workspace(routed_workspace, log=False, watch=False) as router:
        assert router.answer(REFUND_Q, "billing").route == "replay"  # asked alone: the trained wording
        history = [{"role": "user", "content": "I bought the yearly plan for my team."},
                   {"role": "assistant", "content": "Thanks! What can I help with?"}]
        routed = router.answer("And " + REFUND_Q[0].lower() + REFUND_Q[1:], "billing", history)
        assert (routed.route, routed.reason) == ("rag", "conversation")
        assert routed.checks["rewrite"] == "rules" and router._trace(routed).rewrite_method == "rules"
        same = router.answer(REFUND_Q, "billing", history)  # self-contained in the same conversation
        assert same.route == "replay" and same.turn.method == "none"


def test_an_imported_turn_keeps_its_message_and_curation_never_trains_on_a_rule_rewrite(tmp_path):
    from distill.learn.curate import curate
    from distill.rag.external import TraceLogger, import_file
    from distill.workspace import Workspace

    workspace = Workspace(tmp_path)
    record = {"id": "t1", "query": "And how long is it valid?", "answer": "One hour.", "scope": "notes",
              "history": PASSWORD, "contexts": [{"id": "kb/reset", "text": "The reset link is valid for one hour."}]}
    bad = {**record, "id": "t2", "history": "not a list"}
    (tmp_path / "t.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(bad) + "\n")
    report = import_file(workspace, tmp_path / "t.jsonl")
    assert report.imported == 1 and "'history'" in report.bad[0][1]
    with TraceLogger(tmp_path) as logger:  # the embedded logger reads the conversation the same way
        logger.log(**{**record, "id": "t3", "query": "How do I export my notes?"})
        logger.log(**{**record, "id": "t4"})
        with pytest.raises(ValueError, match="'history': the conversation must be a list"):
            logger.log(**bad)  # checked in the caller, as every field is
    with TraceStore(workspace.traces_db) as store:
        rows = store.sql("SELECT query_id, query, raw_message, rewrite_method FROM traces ORDER BY query_id")
    rule = {"query": "And how long is it valid? reset password", "raw_message": "And how long is it valid?",
            "rewrite_method": "rules"}
    assert rows == [{"query_id": "t1", **rule}, {"query_id": "t3", "query": "How do I export my notes?",
                    "raw_message": "How do I export my notes?", "rewrite_method": "none"}, {"query_id": "t4", **rule}]
    result = curate(workspace, workspace.config({"curate": {"eval_days": 0}}))
    assert dict(result.decisions["reject"]) == {"not_standalone": 2, "infrequent": 1}  # the export question: asked once
