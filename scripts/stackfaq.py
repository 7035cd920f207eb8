"""StackFAQ as a corpus and a query log with real rewordings, for the paraphrase benchmark.

StackFAQ (Karan and Šnajder, 2018) holds 125 web-application FAQ threads, each with about ten
rephrasings that annotators wrote in their own words. Here each thread is one document (its
question as the heading, its answers below), and the rephrasings are what users ask:

    >>> threads = load_threads()
    >>> traffic = make_traffic(threads, Path("bench/paraphrase/traffic"))
    >>> traffic["counts"]
    {'seen': ..., 'novel': ..., 'out_of_scope': ...}

For every thread a few rephrasings (`seen_per_thread`) are the wordings people used before the
cutoff; the rest are asked only in the held-out last week (novel wordings), beside more asks of the
seen ones. Threads are drawn Zipf-weighted (a fixed random order of popularity). Out-of-scope
questions (off-topic ones, and PolicyQA and COVID FAQ questions asked of this corpus) are asked
once each: one half before the cutoff (rare traffic the pipeline sees and must not learn), the
other half only in the held-out week. Threads are halved (alternately in popularity order):
settings are chosen on the *tune* half and figures quoted from the *report* half.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
STACKFAQ = DATASETS / "stackfaq" / "stackExchange-FAQ.json"
SCOPE = "webapps"

OFF_TOPIC = [
    "What is the capital of Australia?", "How long should I boil an egg?", "Who won the football world cup in 2018?",
    "What is a good recipe for banana bread?", "How many moons does Jupiter have?", "Can dogs eat grapes?",
    "How do I change a flat tire on my bike?", "What is the best time to plant tomatoes?",
    "How do I get rid of hiccups?", "What is the boiling point of water at high altitude?",
    "How do I tie a bow tie?", "Which planet is closest to the sun?", "How do I descale my kettle?",
    "What is the difference between weather and climate?", "How many calories are in an apple?",
    "How do I remove a red wine stain from a carpet?", "When was the Eiffel Tower built?",
    "How do I train my cat to use a scratching post?", "What is the tallest mountain in Africa?",
    "How do I fold a fitted sheet?", "What is the speed of light?", "How often should I water a cactus?",
    "Who wrote Pride and Prejudice?", "How do I make cold brew coffee?", "What causes thunder?",
    "How do I unclog a kitchen sink?", "What language is spoken in Brazil?", "How do I sharpen a kitchen knife?",
    "Is it safe to swim after eating?", "How do I start running as a beginner?",
    "What is the population of Canada?", "How do I repot an orchid?", "Why is the sky blue?",
    "How do I clean a cast iron pan?", "What is the chemical symbol for gold?", "How do I learn to juggle?",
    "What time zone is Tokyo in?", "How do I keep bread fresh longer?", "How many bones are in the human body?",
    "What is the rule of thirds in photography?",
]


def require_stackfaq() -> Path:
    if not STACKFAQ.exists():
        raise SystemExit(f"{STACKFAQ} not found: this benchmark needs ../shared/datasets/stackfaq")
    return STACKFAQ


def load_threads() -> list[dict]:
    """[{thread, doc_id, question, answers, rephrasings}], rephrasings without the '*' / null markers."""
    data = json.loads(require_stackfaq().read_text())["root"]["qapair"]
    threads = []
    for number, pair in enumerate(data):
        rephrasings = [" ".join(r.split()) for r in (pair.get("rephr") or []) if r and r.strip() and r.strip() != "*"]
        answers = [" ".join(a.split()) for a in (pair.get("answer") or []) if a and a.strip()]
        threads.append({"thread": number, "doc_id": f"stackfaq/{number:03d}", "question": " ".join(pair["question"].split()),
                        "answers": answers, "rephrasings": list(dict.fromkeys(rephrasings))})
    return threads


def popularity(threads: list[dict], seed: int = 0) -> list[int]:
    """Thread numbers, most asked first: a fixed random order."""
    order = [t["thread"] for t in threads]
    random.Random(seed).shuffle(order)
    return order


def split_threads(threads: list[dict], seed: int = 0) -> dict[str, set[int]]:
    """{'tune': thread numbers, 'report': thread numbers}: alternate threads in popularity order, so
    both halves hold frequent and rare ones alike."""
    order = popularity(threads, seed)
    return {"tune": set(order[0::2]), "report": set(order[1::2])}


def write_corpus(threads: list[dict], path: Path) -> Path:
    """One document per thread, as JSON lines `distill ingest` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as out:
        for t in threads:
            text = f"# {t['question']}\n\n" + "\n\n".join(t["answers"])
            out.write(json.dumps({"id": t["doc_id"], "title": t["question"], "text": text, "source": "stackexchange",
                                  "scope": SCOPE, "version": 1}) + "\n")
    return path


def other_corpus_questions(n: int, seed: int = 0) -> list[str]:
    """Questions of the other shared datasets (PolicyQA, the COVID FAQ), asked of this corpus."""
    found = []
    policyqa = DATASETS / "policyqa" / "dev.json"
    if policyqa.exists():
        data = json.loads(policyqa.read_text())["data"]
        found += sorted({qa["question"].strip() for a in data for p in a["paragraphs"] for qa in p["qas"]})
    covid = DATASETS / "covid_faq_versions"
    for file in sorted(covid.glob("*.jsonl")) if covid.exists() else []:
        found += [json.loads(line)["question"].removeprefix("Q:").strip() for line in file.read_text().splitlines()
                  if line.strip()]
    random.Random(seed).shuffle(found)
    return found[:n]


def make_traffic(threads: list[dict], out_dir: Path, seen_per_thread: int = 4, before: int = 2500, after: int = 900,
                 novel_share: float = 0.5, zipf_s: float = 1.0, other_questions: int = 120, seed: int = 0,
                 start: datetime = datetime(2026, 9, 1, tzinfo=timezone.utc)) -> dict:
    """Write `queries.jsonl` (what the teacher sees) and `gold.jsonl` (thread, kind, gold answers)."""
    rng = random.Random(seed + 1)
    order = popularity(threads, seed)
    weights = {thread: 1 / (rank + 1) ** zipf_s for rank, thread in enumerate(order)}
    by_number = {t["thread"]: t for t in threads}
    seen, novel = {}, {}
    for t in threads:
        wordings = list(t["rephrasings"])
        rng.shuffle(wordings)
        seen[t["thread"]], novel[t["thread"]] = wordings[:seen_per_thread], wordings[seen_per_thread:]
    out_of_scope = list(OFF_TOPIC) + other_corpus_questions(other_questions, seed)
    rng.shuffle(out_of_scope)
    oos_before, oos_after = out_of_scope[::2], out_of_scope[1::2]

    rows: list[dict] = []
    numbers, thread_weights = list(weights), list(weights.values())
    cutoff = start + timedelta(days=21)
    for _ in range(before):
        thread = rng.choices(numbers, thread_weights)[0]
        rows.append({"query": rng.choice(seen[thread]), "thread": thread, "kind": "seen",
                     "asked_at": start + timedelta(seconds=rng.uniform(0, 21 * 86400 - 7200))})
    for _ in range(after):
        thread = rng.choices(numbers, thread_weights)[0]
        kind = "novel" if novel[thread] and rng.random() < novel_share else "seen"
        rows.append({"query": rng.choice(novel[thread] if kind == "novel" else seen[thread]), "thread": thread,
                     "kind": kind, "asked_at": cutoff + timedelta(seconds=rng.uniform(3600, 7 * 86400 - 3600))})
    for question in oos_before:
        rows.append({"query": question, "thread": None, "kind": "out_of_scope",
                     "asked_at": start + timedelta(seconds=rng.uniform(0, 21 * 86400 - 7200))})
    for question in oos_after:
        rows.append({"query": question, "thread": None, "kind": "out_of_scope",
                     "asked_at": cutoff + timedelta(seconds=rng.uniform(3600, 7 * 86400 - 3600))})
    rows.sort(key=lambda r: r["asked_at"])

    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "queries.jsonl").open("w") as queries, (out_dir / "gold.jsonl").open("w") as gold:
        for number, row in enumerate(rows):
            query_id = f"sfq-{number:05d}"
            queries.write(json.dumps({"query_id": query_id, "query": row["query"], "scope": SCOPE,
                                      "timestamp": row["asked_at"].isoformat()}) + "\n")
            thread = by_number.get(row["thread"])
            gold.write(json.dumps({"query_id": query_id, "query": row["query"], "scope": SCOPE, "kind": row["kind"],
                                   "thread": row["thread"], "gold_answers": thread["answers"] if thread else [],
                                   "gold_doc_ids": [thread["doc_id"]] if thread else [],
                                   "should_refuse": thread is None}) + "\n")
    counts = {kind: sum(r["kind"] == kind and r["asked_at"] >= cutoff for r in rows)
              for kind in ("seen", "novel", "out_of_scope")}
    return {"queries": out_dir / "queries.jsonl", "gold": out_dir / "gold.jsonl", "cutoff": cutoff, "counts": counts,
            "seen_wordings": {t: w for t, w in seen.items()}, "novel_wordings": {t: w for t, w in novel.items()}}
