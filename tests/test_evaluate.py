import pytest

from distill.errors import DistillError
from distill.jobs.eval_sets import gold_items, held_out_items, load_gold_rows
from distill.jobs.evaluate import SYSTEMS, evaluate_systems, route_at

from conftest import SAMPLE


@pytest.mark.slow
def test_every_system_is_scored_on_the_held_out_traffic_with_gold(sample_workspace):
    gold = load_gold_rows(SAMPLE / "gold.jsonl")
    items = held_out_items(sample_workspace, gold)
    assert items and sum(i.weight for i in items) >= len(items)
    assert sum(i.gold_answers is not None for i in items) >= len(items) // 2  # joined by the question
    figures = evaluate_systems(sample_workspace, sample_workspace.config(), items, progress=False)
    assert set(figures["systems"]) == set(SYSTEMS)
    teacher, routed = figures["systems"]["teacher"], figures["systems"]["routed"]
    assert teacher["agreement"] == 1.0 and teacher["served_share"] == 0.0
    assert 0.0 <= teacher["f1_vs_gold"] <= 1.0 and teacher["cost_per_success_usd"] > 0
    assert sum(routed["reasons"].values()) == figures["traffic"]
    assert routed["served_share"] == pytest.approx(routed["reasons"].get("served", 0) / figures["traffic"], abs=1e-3)
    # the curve's strict end: an error rate of 0 serves no novel wording, so only trained ones reach the student
    strict = min(figures["curve"], key=lambda c: c["max_error_rate"])
    assert strict["max_error_rate"] == 0.0 and strict["served_share"] <= routed["served_share"]
    # seen and novel wordings are reported apart, and the routed system never serves more than it covers
    assert set(figures["by_wording"]) <= {"seen", "novel"} and figures["by_wording"]
    for group in figures["by_wording"].values():
        assert group["routed"]["served_share"] <= group["replay"]["served_share"] + 1e-9
    assert figures["decision"]["max_error_rate"] == 0.02
    assert figures["retrieval"]["queries"] > 0 and 0 <= figures["retrieval"]["mrr"] <= 1
    assert "notes" in figures["slices"]["scope"]
    assert figures["router_overhead_ms"]["p50"] > 0
    assert figures["served_wording_seen_in_training"] <= routed["reasons"].get("served", 0)
    assert figures["safety"]["served_by_student"] == 0  # no question curation flagged as risky reached the student


def test_a_gold_file_is_an_evaluation_set_of_its_own(sample_workspace, tmp_path):
    items = gold_items(SAMPLE / "gold.jsonl")
    refuse = [i for i in items if i.should_refuse]
    assert len(items) == 58 and len(refuse) == 3
    figures = evaluate_systems(sample_workspace, sample_workspace.config(), items[:12] + refuse, progress=False)
    teacher = figures["systems"]["teacher"]
    assert teacher["refusal_correct"] is not None and teacher["citation_correct"] is not None
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x"}\n')
    with pytest.raises(DistillError, match="line 1 is not a JSON object with gold_answers"):
        gold_items(bad)


def test_the_routed_reason_follows_the_routers_order():
    record = {"failed": None, "intent": {"intent_id": "c0"}}
    assert route_at(record, True) == "served" and route_at(record, False) == "coverage"
    assert route_at({**record, "failed": "stale"}, True) == "stale"
    assert route_at({**record, "failed": "stale"}, False) == "coverage"  # coverage is checked first
    assert route_at({**record, "failed": "high_risk"}, False) == "high_risk"


def test_the_open_book_route_follows_the_routers_order():
    from distill.jobs.evaluate import open_book_route
    from distill.learn.open_book import Quoted
    from distill.learn.student_gate import StudentGate

    class Prices:
        teacher_pricing, prompt_price_per_million, completion_price_per_million, local_price_per_hour = "api", 0.15, 0.6, 0.1

    evidence = {"examples": [{"score": -0.2, "error": False}] * 60, "student_cost_usd": 1e-6, "teacher_cost_usd": 1e-4}
    gate = StudentGate(evidence, 0.02, Prices, "openai")
    book = {"refusal": None, "read": Quoted("14 days", "billing/refunds@v1#0", True, False), "score": -0.1}
    assert open_book_route({"open_book": book}, gate) == "served"
    assert open_book_route({"open_book": {**book, "score": -0.5}}, gate) == "confidence"
    assert open_book_route({"open_book": {**book, "read": Quoted("14 days", None, False, False)}}, gate) == "not_quoted"
    assert open_book_route({"open_book": {**book, "read": Quoted("I don't know.", None, False, True)}}, gate) == "student_refused"
    assert open_book_route({"open_book": {"refusal": "not_answerable"}}, gate) == "not_answerable"
    cheaper = StudentGate({**evidence, "teacher_cost_usd": 1e-7}, 0.02, Prices, "openai")
    assert open_book_route({"open_book": book}, cheaper) == "teacher_cheaper"
    assert open_book_route({"open_book": book}, StudentGate({}, 0.02, Prices, "openai")) == "uncalibrated"
