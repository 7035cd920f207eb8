"""Realistic query logs from a SQuAD-format QA set (PolicyQA), for collection and benchmarks.

Real traffic has a frequent head and a long tail, and the same need arrives in several wordings.
Here an *intent* is a (website, question category) pair; its wordings are the dataset's distinct
questions for it. Intents are drawn Zipf-distributed, a wording uniformly within the intent, and
timestamps spread over several weeks, all from a fixed seed:

    make_traffic(Path("dev.json"), Path("out/"), n_queries=4000, seed=0)

Gold answers go to a separate `gold.jsonl` keyed by `query_id`, never into the query log the
teacher sees, so evaluation cannot leak into traces.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from distill.errors import DistillError


@dataclass
class TrafficReport:
    queries: int
    intents: int
    distinct_queries: int
    top10_share: float
    queries_file: Path
    gold_file: Path


def _pairs(squad_path: Path) -> dict[tuple[str, str], dict]:
    """(website, question) -> its category, gold answer texts and the segments that answer it."""
    try:
        data = json.loads(Path(squad_path).read_text(encoding="utf-8"))["data"]
    except FileNotFoundError:
        raise DistillError(f"{squad_path} does not exist; pass a SQuAD-format JSON file") from None
    except (json.JSONDecodeError, KeyError, TypeError):
        raise DistillError(f"{squad_path} is not SQuAD-format JSON") from None
    pairs: dict[tuple[str, str], dict] = {}
    for article in data:
        for number, paragraph in enumerate(article["paragraphs"]):
            for qa in paragraph["qas"]:
                entry = pairs.setdefault((article["title"], qa["question"].strip()),
                                         {"type": qa.get("type", ""), "answers": [], "doc_ids": []})
                entry["answers"] += [a["text"] for a in qa["answers"] if a["text"] not in entry["answers"]]
                doc_id = f"{article['title']}/{number:03d}"  # the ids `corpus` gives SQuAD paragraphs
                if doc_id not in entry["doc_ids"]:
                    entry["doc_ids"].append(doc_id)
    return pairs


def make_traffic(squad_path: Path, out_dir: Path, n_queries: int = 4000, days: int = 28, zipf_s: float = 1.1,
                 seed: int = 0, start: datetime = datetime(2026, 9, 1, tzinfo=timezone.utc)) -> TrafficReport:
    """Write `queries.jsonl` and `gold.jsonl` into `out_dir`."""
    if n_queries < 1:
        raise DistillError(f"--n must be at least 1 (got {n_queries})")
    pairs = _pairs(squad_path)
    intents: dict[tuple[str, str], list[str]] = defaultdict(list)
    for (website, question), entry in sorted(pairs.items()):
        intents[(website, entry["type"].split("|||")[0])].append(question)
    rng = random.Random(seed)
    order = sorted(intents)
    rng.shuffle(order)
    weights = [1 / (rank + 1) ** zipf_s for rank in range(len(order))]
    drawn = rng.choices(order, weights=weights, k=n_queries)
    span = timedelta(days=days).total_seconds()
    times = sorted(start + timedelta(seconds=rng.uniform(0, span)) for _ in range(n_queries))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    queries_file, gold_file = out_dir / "queries.jsonl", out_dir / "gold.jsonl"
    counts: dict = defaultdict(int)
    asked: set[tuple[str, str]] = set()
    with queries_file.open("w") as queries, gold_file.open("w") as gold:
        for number, (intent, moment) in enumerate(zip(drawn, times)):
            website = intent[0]
            question = rng.choice(intents[intent])
            entry = pairs[(website, question)]
            query_id = f"q{seed}-{number:07d}"
            counts[intent] += 1
            asked.add((website, question))
            stamp = moment.isoformat().replace("+00:00", "Z")
            queries.write(json.dumps({"query_id": query_id, "query": question, "scope": website,
                                      "timestamp": stamp}) + "\n")
            gold.write(json.dumps({"query_id": query_id, "query": question, "scope": website,
                                   "gold_answers": entry["answers"], "gold_doc_ids": entry["doc_ids"],
                                   "type": entry["type"]}) + "\n")
    top10 = sum(sorted(counts.values(), reverse=True)[:10]) / n_queries
    return TrafficReport(n_queries, len(counts), len(asked), round(top10, 3), queries_file, gold_file)
