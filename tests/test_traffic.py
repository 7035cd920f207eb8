import json
from collections import Counter
from pathlib import Path

import pytest

from distill.errors import DistillError
from distill.rag.traffic import make_traffic

POLICYQA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "policyqa" / "dev.json"


def tiny_squad(path: Path) -> Path:
    paragraphs = []
    for n in range(6):
        qas = [{"id": f"{n}-{k}", "question": f"Question {k} about topic {n % 3}?", "type": f"Cat{n % 3}|||x",
                "answers": [{"text": f"answer {n}", "answer_start": 0}]} for k in range(2)]
        paragraphs.append({"context": f"answer {n} is here.", "qas": qas})
    path.write_text(json.dumps({"data": [{"title": "a.com", "paragraphs": paragraphs[:3]},
                                         {"title": "b.com", "paragraphs": paragraphs[3:]}]}))
    return path


def test_traffic_is_deterministic_and_keeps_gold_apart(tmp_path):
    squad = tiny_squad(tmp_path / "s.json")
    one = make_traffic(squad, tmp_path / "one", n_queries=300, seed=7)
    two = make_traffic(squad, tmp_path / "two", n_queries=300, seed=7)
    assert one.queries_file.read_text() == two.queries_file.read_text()
    queries = [json.loads(l) for l in one.queries_file.read_text().splitlines()]
    gold = [json.loads(l) for l in one.gold_file.read_text().splitlines()]
    assert len(queries) == 300 and set(queries[0]) == {"query_id", "query", "scope", "timestamp"}
    assert [q["query_id"] for q in queries] == [g["query_id"] for g in gold]
    assert all(g["gold_answers"] and g["gold_doc_ids"] for g in gold)
    assert [q["timestamp"] for q in queries] == sorted(q["timestamp"] for q in queries)


def test_bad_inputs(tmp_path):
    with pytest.raises(DistillError, match="does not exist"):
        make_traffic(tmp_path / "nope.json", tmp_path)
    (tmp_path / "bad.json").write_text("[]")
    with pytest.raises(DistillError, match="SQuAD"):
        make_traffic(tmp_path / "bad.json", tmp_path)


@pytest.mark.skipif(not POLICYQA.exists(), reason="../shared/datasets/policyqa is not present")
def test_policyqa_traffic_has_a_frequent_head_and_paraphrases(tmp_path):
    report = make_traffic(POLICYQA, tmp_path, n_queries=4000, seed=0)
    queries = [json.loads(l) for l in report.queries_file.read_text().splitlines()]
    counts = Counter((q["scope"], q["query"]) for q in queries)
    assert report.top10_share > 0.3  # a frequent head ...
    assert sum(1 for c in counts.values() if c == 1) > 50  # ... and a long tail
    assert report.distinct_queries > report.intents  # intents arrive in several wordings
