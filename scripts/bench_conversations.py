"""Two-turn conversations from the shipped FAQ data: is a follow-up answered in its conversation?

    PYTHONPATH=src:scripts python scripts/bench_conversations.py --data covid     # or stackfaq
    PYTHONPATH=src:scripts python scripts/bench_conversations.py --data stackfaq --per-group 40

Each conversation's first turn is a question about one entry (StackFAQ: a thread's rephrasing;
COVID FAQ: an entry's question). Its follow-up is either
- *dependent*: another question that only makes sense with the first: for StackFAQ another
  rephrasing of the same thread (the first that shares a subject with it), for the COVID FAQ the question of another entry of the same source;
  in both, the longest run of words it shares with the first turn (the subject the first turn
  named: "my facebook account", "the virus") is replaced by "it";
- *self-contained*: the question of an entry of another thread or source, unchanged.

The follow-up's right entry is its own (the thread, or the entry it was written from). For each
dependent follow-up the router answers three times: the original question alone (what it gets
standalone), the follow-up alone (last message only), and the follow-up with its conversation.
Reported: answers from the right entry in each case, follow-ups replayed or answered by the student
from a wrong entry, self-contained follow-ups the rewrite changed, and the time the rewrite adds
(`Router.standalone`, no LLM: the rule).

With `--teacher transformers` SmolLM2-135M-Instruct is the teacher end to end: it answers the RAG
turns and condenses the follow-ups the rule finds (about 1 s a condensed turn on a 2-core CPU);
results go to conversations-<data>-<half>-transformers.json.

With `--llm` it measures the LLM rewrite instead: SmolLM2-135M-Instruct condenses each dependent
follow-up, and retrieval is asked the LLM's question and the rule's.

It runs on the workspace `bench_open_book.py --data <data>` left (corpus, traces, a student), so
replay and the student are measured too; without one it stops and says so.
The entries are split in two halves by a hash of their id: the detector's rules were chosen on
`--half tune` and are reported on `--half report` (the default). Results go to
bench/results/conversations-<data>-<half>.json.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

from distill.config import load_config
from distill.rag.conversation import QUESTION_WORDS
from distill.rag.corpus import chunk_doc_version
from distill.serve.router import Router
from distill.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
WORKSPACES = {"covid": ROOT / "bench" / "open-book-covid-standin", "stackfaq": ROOT / "bench" / "open-book-stackfaq-standin"}


def entries(data: str) -> list[dict]:
    """Every entry as {doc_id, scope, group, questions}: the SQuAD file bench_open_book ingests
    (faq_squad.py), a paragraph per entry, its doc id `<title>/<number>`."""
    import faq_squad

    with tempfile.TemporaryDirectory() as folder:
        path = faq_squad.stackfaq_squad(Path(folder) / "s.json") if data == "stackfaq" else \
            faq_squad.covid_squad(Path(folder) / "c.json", 1)
        articles = json.loads(path.read_text())["data"]
    return [{"doc_id": f"{a['title']}/{n:03d}", "scope": a["title"], "questions": [q["question"] for q in p["qas"]],
             "group": a["title"] if data == "covid" else f"{a['title']}/{n:03d}"}
            for a in articles for n, p in enumerate(a["paragraphs"])]


def _tokens(text: str) -> list[str]:
    return re.findall(r"[A-Za-z0-9][A-Za-z0-9'’-]*|[^\sA-Za-z0-9]", text)


DETERMINERS = ("the", "a", "an", "my", "your", "our", "this")


def _subject(span: list[str]) -> bool:
    """A run of words that names a thing: opened by a determiner ("the virus", "my facebook
    account"), two content words ("google docs"), or one proper name ("Trello", "COVID-19")."""
    content = [w for w in span if w.isalnum() or "-" in w]
    content = [w for w in content if w.lower() not in QUESTION_WORDS]
    if not content or not all(w.isalnum() or "-" in w or "'" in w for w in span):
        return False
    return (span[0].lower() in DETERMINERS and len(span) > 1) or len(content) >= 2 or \
        (len(span) == 1 and (span[0][0].isupper() or "-" in span[0]) and len(span[0]) > 3)


def with_pronoun(follow_up: str, first: str) -> str | None:
    """`follow_up` with the longest run of words it shares with `first` that names a thing
    (`_subject`) replaced by "it"; None when they share none."""
    words, seen = _tokens(follow_up), f" {' '.join(_tokens(first)).lower()} "
    best = None
    for i in range(len(words)):
        for j in range(len(words), i, -1):
            span = words[i:j]
            if (best is None or j - i > best[1] - best[0]) and _subject(span) and f" {' '.join(span).lower()} " in seen:
                best = (i, j)
                break
    if best is None or best[0] == 0:  # "it" opening a sentence reads as a dummy subject as often as not
        return None
    i, j = best
    text = " ".join(words[:i] + ["it"] + words[j:])
    return re.sub(r"\s+([?.!,;:])", r"\1", text)


def in_half(doc_id: str, half: str) -> bool:
    """Entries split in two by a hash of their id: the detector's rules are chosen on `tune` and
    reported on `report` (`all`: both)."""
    parity = int(hashlib.sha1(doc_id.encode()).hexdigest(), 16) % 2
    return half == "all" or parity == (half == "report")


def conversations(data: str, per_group: int, seed: int = 0, half: str = "all") -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    rows = [e for e in entries(data) if in_half(e["group"], half)]
    dependent, self_contained = [], []
    for entry in rng.sample(rows, len(rows)):
        if data == "stackfaq":
            first, target = entry["questions"][0], entry
            original = next((q for q in entry["questions"][1:] if with_pronoun(q, first)), None)
            if original is None:
                continue
        else:
            first = entry["questions"][0]
            others = [e for e in rows if e["group"] == entry["group"] and e is not entry
                      and with_pronoun(e["questions"][0], first)]
            if not others:
                continue
            target = rng.choice(others)
            original = target["questions"][0]
        follow_up = with_pronoun(original, first)
        if follow_up and len(dependent) < per_group:
            dependent.append({"first": first, "scope": entry["scope"], "original": original, "follow_up": follow_up,
                              "doc": target["doc_id"]})
        elsewhere = [e for e in rows if e["group"] != entry["group"]]
        if len(self_contained) < per_group:
            other = rng.choice(elsewhere)
            self_contained.append({"first": first, "scope": entry["scope"], "follow_up": other["questions"][0],
                                   "follow_scope": other["scope"], "doc": other["doc_id"]})
        if len(dependent) >= per_group and len(self_contained) >= per_group:
            break
    return dependent, self_contained


def doc_of(routed) -> str | None:
    return chunk_doc_version(routed.citations[0])[0] if routed.citations and not routed.refused else None


def run(data: str, per_group: int, half: str = "report", teacher: str = "extractive") -> dict:
    """The router answers each conversation (`teacher`: the workspace's extractive stand-in, or
    'transformers', SmolLM2-135M-Instruct answering and condensing follow-ups)."""
    home = WORKSPACES[data]
    if not (home / "index").exists():
        raise SystemExit(f"{home} has no index: run `scripts/bench_open_book.py --data {data}` first")
    dependent, self_contained = conversations(data, per_group, half=half)
    counts = {k: 0 for k in ("standalone_right", "alone_right", "conversation_right", "alone_wrong_served",
                             "conversation_wrong_served", "rewritten", "self_rewritten", "self_right",
                             "self_wrong_served")}
    routes: dict[str, int] = {}
    added_ms: list[float] = []
    examples = []
    workspace = Workspace(home)
    config = load_config(home, {"teacher": {"backend": teacher}})
    methods = collections.Counter()  # how the follow-ups were made standalone, and how many of each came from the right entry
    right_by_method = collections.Counter()
    with Router.from_workspace(workspace, config, log=False, watch=False) as router:
        for c in dependent:
            first = router.answer(c["first"], c["scope"])
            history = [{"role": "user", "content": c["first"]}, {"role": "assistant", "content": first.answer}]
            started = time.perf_counter()
            turn = router.standalone(c["follow_up"], history, c["scope"])
            added_ms.append((time.perf_counter() - started) * 1000)
            standalone = router.answer(c["original"], c["scope"])
            alone = router.answer(c["follow_up"], c["scope"])
            together = router.answer(c["follow_up"], c["scope"], history)
            counts["rewritten"] += turn.method != "none"
            methods[together.turn.method] += 1
            right_by_method[together.turn.method] += doc_of(together) == c["doc"]
            for name, routed in (("standalone", standalone), ("alone", alone), ("conversation", together)):
                counts[f"{name}_right"] += doc_of(routed) == c["doc"]
            counts["alone_wrong_served"] += alone.route in ("replay", "student") and doc_of(alone) != c["doc"]
            counts["conversation_wrong_served"] += together.route in ("replay", "student") and doc_of(together) != c["doc"]
            routes[f"{together.route}/{together.reason}"] = routes.get(f"{together.route}/{together.reason}", 0) + 1
            if len(examples) < 8:
                examples.append({"first": c["first"], "follow_up": c["follow_up"], "question": together.query,
                                 "route": together.route, "right": doc_of(together) == c["doc"],
                                 "alone_right": doc_of(alone) == c["doc"]})
        for c in self_contained:
            history = [{"role": "user", "content": c["first"]}, {"role": "assistant", "content": "..."}]
            started = time.perf_counter()
            turn = router.standalone(c["follow_up"], history, c["follow_scope"])
            added_ms.append((time.perf_counter() - started) * 1000)
            routed = router.answer(c["follow_up"], c["follow_scope"], history)
            counts["self_rewritten"] += turn.method != "none"
            counts["self_right"] += doc_of(routed) == c["doc"]
            counts["self_wrong_served"] += routed.route in ("replay", "student") and doc_of(routed) != c["doc"]
    n, m = len(dependent), len(self_contained)
    added = sorted(added_ms)
    result = {"data": data, "half": half, "teacher": teacher, "dependent": n, "rewrite_methods": dict(methods), "right_by_method": dict(right_by_method), "self_contained": m, **counts, "routes_with_conversation": routes,
              "right_share_of_standalone": counts["conversation_right"] / counts["standalone_right"]
              if counts["standalone_right"] else None,
              "added_ms_p50": round(statistics.median(added), 3), "added_ms_p90": round(added[int(0.9 * (len(added) - 1))], 3),
              "examples": examples}
    print(f"{data} ({half} half, {teacher} teacher): {n} dependent follow-ups, {m} self-contained")
    print(f"  from the right entry: standalone {counts['standalone_right']}/{n}, last message only "
          f"{counts['alone_right']}/{n}, with the conversation {counts['conversation_right']}/{n} "
          f"({result['right_share_of_standalone'] or 0:.0%} of standalone)")
    print(f"  served by replay or the student from a wrong entry: last message only {counts['alone_wrong_served']}, "
          f"with the conversation {counts['conversation_wrong_served']}")
    print(f"  dependent follow-ups rewritten: {counts['rewritten']}/{n} (with the conversation: {dict(methods)}, of which from the right entry {dict(right_by_method)}); routes {routes}")
    print(f"  self-contained follow-ups rewritten: {counts['self_rewritten']}/{m}; from the right entry "
          f"{counts['self_right']}/{m}; wrong served {counts['self_wrong_served']}")
    print(f"  added by the rewrite: p50 {result['added_ms_p50']} ms, p90 {result['added_ms_p90']} ms")
    suffix = "" if teacher == "extractive" else f"-{teacher}"
    out = ROOT / "bench" / "results" / f"conversations-{data}-{half}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def llm_rewrites(data: str, per_group: int, half: str = "report") -> dict:
    """The LLM's condensed questions for the dependent follow-ups (SmolLM2-135M-Instruct, the
    transformers teacher's default, on this machine): how many count (one question that no
    longer refers back), and how often retrieval puts the right entry first for the LLM's question
    and for the rule's, on the same follow-ups."""
    import threading

    from distill.llm.local import SMOLLM2
    from distill.rag.conversation import _condensed
    from distill.rag.generators import TransformersGenerator
    from distill.serve.routes import conversation_turn

    workspace = Workspace(WORKSPACES[data])
    llm = TransformersGenerator.load(SMOLLM2, workspace, 64)
    router = Router.from_workspace(workspace, log=False, watch=False)
    retriever = router.teacher.retriever

    def top_doc(text: str, scope: str) -> str | None:
        hits = retriever.search(text, scope, k=1).hits
        return chunk_doc_version(hits[0].chunk["chunk_id"])[0] if hits else None

    dependent, _ = conversations(data, per_group, half=half)
    counted = llm_right = rule_right = asked = 0
    took, examples = [], []
    for c in dependent:
        history = [{"role": "user", "content": c["first"]}, {"role": "assistant", "content": "..."}]
        started = time.perf_counter()
        turn = conversation_turn(router.teacher, threading.Lock(), c["follow_up"], history, c["scope"], llm.chat)
        asked += turn.signal is not None and _condensed(c["follow_up"], history, llm.chat) is not None
        if turn.signal is not None:  # the LLM is asked only of a follow-up
            took.append((time.perf_counter() - started) * 1000)
        rule = conversation_turn(router.teacher, threading.Lock(), c["follow_up"], history, c["scope"])  # no LLM
        if turn.method == "llm":
            counted += 1
            llm_right += top_doc(turn.question, c["scope"]) == c["doc"]
            rule_right += top_doc(rule.question, c["scope"]) == c["doc"]
            if len(examples) < 6:
                examples.append({"follow_up": c["follow_up"], "llm": turn.question, "rule": rule.question})
    router.close()
    flagged = len(took)
    result = {"data": data, "half": half, "dependent": len(dependent), "follow_ups_found": flagged,
              "llm_one_question": asked, "llm_counted": counted, "llm_right_first": llm_right, "rule_right_first_on_those": rule_right,
              "condense_ms_p50": round(statistics.median(took), 1) if took else None, "examples": examples}
    print(f"{data} ({half} half): {len(dependent)} dependent follow-ups, {flagged} found; SmolLM2 gave one "
          f"standalone question for {asked}, which counted (same first document as the rule's) for {counted}; right entry first for {llm_right} of those (the rule's "
          f"question: {rule_right}); p50 {result['condense_ms_p50']} ms a follow-up it was asked")
    out = ROOT / "bench" / "results" / f"conversations-llm-{data}-{half}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=sorted(WORKSPACES), default="covid")
    parser.add_argument("--per-group", type=int, default=60, help="conversations of each kind")
    parser.add_argument("--half", choices=("tune", "report", "all"), default="report",
                        help="the entries the conversations are built from (rules are chosen on tune)")
    parser.add_argument("--llm", action="store_true", help="instead, SmolLM2's condensed questions against the rule's")
    parser.add_argument("--teacher", choices=("extractive", "transformers"), default="extractive",
                        help="who answers: the extractive stand-in, or SmolLM2 answering and condensing follow-ups")
    args = parser.parse_args()
    if args.llm:
        llm_rewrites(args.data, args.per_group, args.half)
    else:
        run(args.data, args.per_group, args.half, args.teacher)


if __name__ == "__main__":
    main()
