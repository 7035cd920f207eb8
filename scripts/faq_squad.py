"""The shared FAQ sets as SQuAD-format files, so bench_open_book.py runs on them as on PolicyQA.

    stackfaq_squad(Path("bench/stackfaq.json"))          # one website, an intent per thread
    covid_squad(Path("bench/covid-v1.json"), version=1)  # a website per source, a question per entry

A SQuAD answer is a span of its paragraph, and these sets' answers are whole replies (StackFAQ's
median top answer is over 100 words), so the gold answer is the reply's lead: its first sentences,
up to LEAD_WORDS words, which is what a short answer gives. Paragraph order is fixed, so version 2
of the COVID FAQ keeps version 1's segment ids and ingesting it gives the changed entries a new
version.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from stackfaq import load_threads

ROOT = Path(__file__).resolve().parents[1]
COVID = ROOT.parent / "shared" / "datasets" / "covid_faq_versions" / "faq_versions.jsonl"
LEAD_WORDS = 40
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def lead(text: str, words: int = LEAD_WORDS) -> str:
    """The first sentences of `text` up to `words` words (always at least one sentence)."""
    kept: list[str] = []
    for sentence in SENTENCE_END.split(" ".join(text.split())):
        if kept and len(" ".join(kept + [sentence]).split()) > words:
            break
        kept.append(sentence)
    return " ".join(kept)


def _paragraph(heading: str, parts: list[str], questions: list[str], intent: str) -> dict:
    """A segment: the heading, then `parts` (a thread's answers, an entry's answer) as paragraphs;
    the gold answer is the first part's lead."""
    parts = [" ".join(part.split()) for part in parts]
    context = f"# {heading}\n\n" + "\n\n".join(parts)
    answer = lead(parts[0])
    return {"context": context, "qas": [{"id": f"{intent}/{n}", "question": q, "type": intent,
                                         "answers": [{"text": answer, "answer_start": context.index(answer)}]}
                                        for n, q in enumerate(questions)]}


def stackfaq_squad(path: Path) -> Path:
    """StackFAQ: one website ('webapps'), a paragraph per thread holding its question and answers;
    the thread's rephrasings are its questions, all of one intent."""
    paragraphs = [_paragraph(t["question"], t["answers"], t["rephrasings"], f"thread{t['thread']:03d}")
                  for t in load_threads() if t["answers"] and t["rephrasings"]]
    return _write(path, [{"title": "webapps", "paragraphs": paragraphs}])


def covid_rows() -> list[dict]:
    if not COVID.exists():
        raise SystemExit(f"{COVID} not found: this benchmark needs ../shared/datasets/covid_faq_versions")
    return [json.loads(line) for line in COVID.read_text().splitlines() if line.strip()]


def covid_squad(path: Path, version: int) -> Path:
    """The COVID FAQ as of `version`: a website per source, a paragraph per entry, its question the
    one wording of its own intent (numbered: the dataset's ids hold '|||', which PolicyQA uses to
    separate a category from its subcategory)."""
    by_source: dict[str, list[dict]] = {}
    for number, row in enumerate(covid_rows()):
        answer = next(v["answer"] for v in row["versions"] if v["version"] == version)
        question = re.sub(r"^Q:\s*", "", row["question"]).strip()
        by_source.setdefault(row["source"], []).append(_paragraph(question, [answer], [question], f"entry{number:04d}"))
    return _write(path, [{"title": source, "paragraphs": paragraphs} for source, paragraphs in sorted(by_source.items())])


def _write(path: Path, articles: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"version": "1.1", "data": articles}))
    return path
