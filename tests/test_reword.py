"""Rewordings: the teacher keeps only those it answers the way their intent is answered."""

import pytest

from distill.errors import DistillError
from distill.learn.reword import TransformersWriter, clean, distinct, load_writer, verified_rewordings, verify

REFUND = {"query": "How many days do I have to request a refund?", "scope": "billing", "intent_id": "c-refund",
          "doc": "billing/refunds", "answer": "you can ask for a refund within 14 days of purchase"}


def test_a_generation_is_cleaned_to_one_new_question():
    assert clean('1. "Within how many days can I get a refund?"\nmore text') == "Within how many days can I get a refund?"
    assert clean("Rewrite: Is PayPal accepted?") == "Is PayPal accepted?"
    assert distinct("How do I export?", ["how do I export", "Can I export my notes?", "can i export my notes",
                                         "export", "What formats can I export to?"], 5) == \
        ["Can I export my notes?", "What formats can I export to?"]


def test_only_rewordings_rag_answers_from_the_intents_document_with_its_answer_are_kept(corpus_workspace):
    config = corpus_workspace.config()
    kept = verify(corpus_workspace, config, [REFUND], [[
        "Within how many days can I ask for a refund?",  # the same need: kept
        "Which payment methods do you accept?",  # another document's answer
        "What medication dosage is safe?",  # a high-risk pattern: dropped unasked
        "how many days do i have to request a refund",  # the wording itself
        "Within how many days can I ask for a refund",  # a duplicate once normalized
    ]])
    assert [r.text for r in kept] == ["Within how many days can I ask for a refund?"]
    assert kept[0].written_from == "how many days do i have to request a refund"
    assert kept[0].intent_id == "c-refund" and kept[0].citations[0].startswith("billing/refunds@v1")


def test_a_local_model_writes_rewordings_and_the_teacher_checks_them(corpus_workspace, tiny_lm_dir):
    config = corpus_workspace.config({"curate": {"rewordings": 2, "rewording_model": str(tiny_lm_dir)}})
    writer = load_writer(config, corpus_workspace)
    assert isinstance(writer, TransformersWriter)
    kept, written = verified_rewordings(corpus_workspace, config, [REFUND], writer)
    assert written <= 2 and len(kept) <= written  # a random tiny model writes noise, which RAG answers otherwise
    assert writer.write([REFUND["query"]], 2) == writer.write([REFUND["query"]], 2)  # seeded: reproducible


def test_the_extractive_teacher_needs_a_rewording_model(corpus_workspace):
    config = corpus_workspace.config({"curate": {"rewordings": 2}})
    with pytest.raises(DistillError, match="curate.rewording_model"):
        load_writer(config, corpus_workspace)
