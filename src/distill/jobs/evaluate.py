"""Evaluate like a product: the teacher, a semantic cache, the student and the routed system, side by side.

Two uses. `nightly` calibrates and scores a candidate on the held-out recent window
(`held_out_queries`; student_gate.fit). `distill eval` (`evaluate_systems`) answers an
evaluation set with every system and scores each on the same questions:

    items = held_out_items(workspace, gold=load_gold_rows(Path("gold.jsonl")))
    figures = evaluate_systems(workspace, config, items)
    figures["systems"]["routed"]["f1_vs_gold"], figures["systems"]["routed"]["served_share"]  # (0.27, 0.58)

The evaluation set is the recent traffic the latest curation run held out (every question asked
after its cutoff, weighted by how often it was asked; gold joined by `query_id` when a gold file is
given), or a gold file of {query, scope, gold_answers, gold_doc_ids?, gold_chunk_ids?,
should_refuse?, type?} rows.

The systems share one pass: per distinct question the teacher answers, the router assesses it once
(coverage undecided, so that it can be decided at several error rates afterwards) and the student
answers from the evidence retrieved now. The routed system is then the router's own rules
(`Router.check`'s order, then the open-book student's checks) at `router.max_error_rate`; the
cost-quality curve sweeps that rate
(`eval.error_rates`) from the same pass. The semantic cache is what a team would pick instead of a
student: the answer of the nearest trained wording at one static cosine (`eval.cache_threshold`,
as GPTCache does), under the same risk and freshness checks. `replay` is the ablation that says
whether the student earns its place: the intent's agreed answer replayed under the router's own
calibrated decision. Every system's scores are also split by wording: `seen` (asked in a wording
the student was trained on) and `novel`. An answer served without RAG is an error when it comes
from another document than the teacher's answer to the same question and their token F1 is below
`eval.success_f1`. Scores are SQuAD token F1 and exact match.
"""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import numpy as np

from distill.errors import DistillError
from distill.jobs.eval_sets import EvalItem, gold_items, held_out_items, load_gold_rows
from distill.learn.curate import REFUSAL_COMPLETION
from distill.learn.student_gate import local_cost
from distill.metrics import best_f1, normalize, normalize_query, rank_scores, token_f1
from distill.progress import track
from distill.store.traces import TraceStore
from distill.workspace import Workspace

SYSTEMS = ("teacher", "cache", "replay", "student", "routed")


SERVED_ROUTES = ("student", "cache", "replay")  # answered without RAG


def evaluate_systems(workspace: Workspace, config, items: list[EvalItem], progress: bool = True,
                     keep_outcomes: bool = False, generate: bool = True) -> dict:
    """Answer every item with each system, score them side by side and sweep the error rate. With
    `keep_outcomes`, every system's answer to every item is kept too (`outcomes`, in item order).
    Without `generate`, the student is never asked: the student system is left out, and the routed
    one is replay then RAG (a benchmark of the decision alone, minutes faster on a CPU)."""
    from distill.serve.router import Router

    if not items:
        raise DistillError("the evaluation set is empty")
    with Router.from_workspace(workspace, config, log=False, watch=False) as router:
        records = [_observe(router, item, generate) for item in track(items, "evaluating", "question", disable=not progress)]
        chunk_texts = router.teacher.retriever.store.chunk_texts(
            {c for r in records for c in r["teacher"].citations + r["teacher"].retrieved + r["intent_citations"]})
        cache = _intent_answers(workspace, router.student.manifest) if router.student else {}
        counter = _token_counter(router)
        for record in records:
            record["prompt_tokens"] = record["teacher"].prompt_tokens or counter(record["teacher"].prompt)
        version, decision = router.version, router.decision
        student_generates = getattr(router.student, "generates", False)
        gates = None
        if router.gate is not None:
            from distill.learn.student_gate import StudentGate

            folder, backend = router.student.folder, router.teacher.generator.backend
            gates = functools.lru_cache(maxsize=None)(
                lambda at_rate: StudentGate.load(folder, at_rate, config.eval, backend))
        trained = {(c.get("scope"), normalize_query(w)) for c in (router.student.manifest.get("intents", [])
                                                                 if router.student else []) for w in c.get("wordings", [])}
    prices = config.eval
    context = {"chunk_texts": chunk_texts, "prices": prices, "success_f1": config.eval.success_f1}
    rate = config.router.max_error_rate

    def covered(record: dict, at_rate: float) -> bool:
        return record["found"] is not None and decision.covers(record["found"], at_rate)

    def routed(record: dict, at_rate: float) -> dict:
        """What the router answers: replay where covered, then the open-book student, else RAG."""
        if gates is not None and generate:
            return _open_book_outcome(record, covered(record, at_rate), cache, prices, gates(at_rate))
        return _cache_outcome(record, covered(record, at_rate), cache, prices, "replay")

    outcomes = {"teacher": [_teacher_outcome(r, prices) for r in records],
                "cache": [_cache_outcome(r, r["similarity"] >= config.eval.cache_threshold, cache, prices, "cache")
                          for r in records],
                "replay": [_cache_outcome(r, covered(r, rate), cache, prices, "replay") for r in records],
                "student": [_student_outcome(r, prices) for r in records] if generate else None,
                "routed": [routed(r, rate) for r in records]}
    if not generate:
        outcomes.pop("student")
    teachers = outcomes["teacher"]
    systems = {name: score_outcomes(items, outs, teachers, context) for name, outs in outcomes.items()}
    if not student_generates and "student" in systems:  # no version, or one that only replays
        systems.pop("student")
    for item in items:
        item.seen = (item.scope, normalize_query(item.query)) in trained
    by_wording = {kind: {name: _served_scores(score_outcomes([i for i in items if i.seen == seen],
                                                             [o for i, o in zip(items, outs) if i.seen == seen],
                                                             [t for i, t in zip(items, teachers) if i.seen == seen], context))
                         for name, outs in outcomes.items() if name in systems}
                  for kind, seen in (("seen", True), ("novel", False)) if any(i.seen == seen for i in items)}
    curve = []
    quality_key = "f1_vs_gold" if any(i.gold_answers for i in items) else "agreement"
    for at_rate in config.eval.error_rates:
        scores = score_outcomes(items, [routed(r, at_rate) for r in records], teachers, context)
        curve.append({"max_error_rate": at_rate, "served_share": scores["served_share"], "quality": scores[quality_key],
                      "error_rate": scores["error_rate"], "cost_per_success_usd": scores["cost_per_success_usd"]})
    teacher_quality = systems["teacher"][quality_key]
    keeps = {f"{p:.0%}": max([c["served_share"] for c in curve if c["quality"] >= p * teacher_quality], default=0.0)
             for p in (0.95, 0.99)}
    router_ms = [r["router_ms"] for r in records if r["failed"] not in ("input",)]
    flagged = [(i, o) for i, o in zip(items, outcomes["routed"]) if i.safety_flag]
    return {"queries": len(items), "traffic": sum(i.weight for i in items),
            "router_overhead_ms": {"p50": round(float(np.percentile(router_ms, 50)), 2),
                                   "p95": round(float(np.percentile(router_ms, 95)), 2)} if router_ms else None,
            "served_wording_seen_in_training": sum(i.weight for i, o in zip(items, outcomes["routed"])
                                                   if o["route"] in SERVED_ROUTES and i.seen),
            "safety": {"flagged_by_curation": sum(i.weight for i, _ in flagged),
                       "served_by_student": sum(i.weight for i, o in flagged if o["route"] in SERVED_ROUTES)},
            "gold_queries": sum(i.gold_answers is not None for i in items), "student_version": version,
            "quality_metric": quality_key, "max_error_rate": rate, "cache_threshold": config.eval.cache_threshold,
            "decision": decision.summary(), "systems": systems, "by_wording": by_wording,
            "curve": curve, "served_share_keeping": keeps, "retrieval": _retrieval(items, records, chunk_texts),
            "slices": _slices(items, outcomes, teachers, context), **({"outcomes": outcomes} if keep_outcomes else {})}


def _served_scores(scores: dict) -> dict:
    """The figures a seen/novel comparison needs."""
    keys = ("served_share", "error_rate", "f1_vs_gold", "agreement", "latency_p50_ms")
    return {"traffic": scores["traffic"], **{k: scores[k] for k in keys}}


def _observe(router, item: EvalItem, generate: bool = True) -> dict:
    """Everything every system needs for one question, each part timed: the teacher's answer, the
    router's assessment (coverage undecided) and the student's answer."""
    record: dict = {"teacher": router.teacher.answer(item.query, item.scope)}
    began = time.perf_counter()
    failed, checks, intent, found = router.assess(item.query, item.scope)
    record.update(router_ms=(time.perf_counter() - began) * 1000, failed=failed, found=found,
                  similarity=checks.get("coverage", 0.0), intent=intent,
                  intent_citations=list((intent or {}).get("citations", [])))
    if getattr(router.student, "generates", False) and failed != "input" and generate:
        return _observe_open_book(router, item, record)
    return record


def _observe_open_book(router, item: EvalItem, record: dict) -> dict:
    """The open-book student's answer from the evidence the teacher retrieves now, read (the block it
    cites, whether it quotes it); a question the teacher would refuse before generating is never
    asked of it (the router sends those to RAG: `not_answerable`)."""
    from distill.learn.open_book import parse_answer, student_evidence
    from distill.llm.local import Generation

    evidence, refusal, _ = student_evidence(router.teacher, item.query, item.scope, router.config.student)
    record["open_book"] = {"refusal": refusal}
    if refusal is not None:
        return record
    began = time.perf_counter()
    generation = router.student.answer(item.query, item.scope, evidence)
    student_ms = (time.perf_counter() - began) * 1000
    read = parse_answer(generation.text, evidence)
    record["open_book"].update(read=read, score=generation.mean_logprob)
    record.update(student=Generation(REFUSAL_COMPLETION if read.refused else read.answer, generation.mean_logprob,
                                     prompt_tokens=generation.prompt_tokens,
                                     completion_tokens=generation.completion_tokens),
                  student_ms=student_ms, student_citations=[read.chunk_id] if read.chunk_id else [])
    return record


def open_book_route(record: dict, gate) -> str:
    """Why the open-book student would not answer a question replay cannot take ('served': it would),
    in the router's order (router._from_open_book)."""
    book = record.get("open_book")
    if gate is None or book is None:
        return "no_student"
    if reason := gate.before_generating():
        return reason
    if book["refusal"] is not None:
        return "not_answerable"
    return gate.after_generating(book["read"], book["score"]) or "served"


def route_at(record: dict, covered: bool) -> str:
    """The router's reason for one observed question, given whether the decision covers it: 'served'
    or the first failing check, in the router's order (those before coverage, coverage, those after,
    the answer)."""
    from distill.serve.routes import BEFORE_COVERAGE

    if record["failed"] in BEFORE_COVERAGE:
        return record["failed"]
    if record["intent"] is None or not covered:
        return "coverage"
    return record["failed"] or "served"


def _teacher_outcome(record: dict, prices) -> dict:
    """`record["prompt_tokens"]`: the RAG prompt's tokens, counted when the backend reports none."""
    answer, prompt_tokens = record["teacher"], record["prompt_tokens"]
    return {"answer": answer.answer, "refused": answer.refused, "citations": answer.citations,
            "latency_ms": answer.latency_ms, "prompt_tokens": prompt_tokens, "completion_tokens": answer.completion_tokens,
            "cost": _teacher_cost(answer, prompt_tokens, prices), "route": "rag", "reason": "teacher"}


def _teacher_cost(answer, prompt_tokens: int, prices) -> float:
    if prices.teacher_pricing == "api":
        completion = answer.completion_tokens or len(answer.answer.split()) * 4 // 3
        return (prompt_tokens * prices.prompt_price_per_million + completion * prices.completion_price_per_million) / 1e6 \
            + local_cost(answer.retrieval_ms, prices)
    return local_cost(answer.latency_ms, prices)


def _fallback(record: dict, prices, reason: str, extra_ms: float) -> dict:
    """The teacher answers after the router (and perhaps the student) spent `extra_ms`."""
    outcome = _teacher_outcome(record, prices)
    outcome.update(latency_ms=outcome["latency_ms"] + extra_ms, cost=outcome["cost"] + local_cost(extra_ms, prices),
                   reason=reason)
    return outcome


def _cache_outcome(record: dict, covered: bool, answers: dict, prices, route: str) -> dict:
    """The covering intent's agreed answer, replayed (`route`: 'cache' or 'replay')."""
    reason = route_at(record, covered)
    intent = record["intent"] or {}
    if reason != "served" or intent.get("intent_id") not in answers:
        return _fallback(record, prices, reason if reason != "served" else "not_cached", record["router_ms"])
    answer = answers[intent["intent_id"]]
    return {"answer": answer or "", "refused": answer is None, "citations": record["intent_citations"],
            "latency_ms": record["router_ms"], "prompt_tokens": 0, "completion_tokens": 0,
            "cost": local_cost(record["router_ms"], prices), "route": route, "reason": "served"}


def _student_outcome(record: dict, prices) -> dict:
    if "student" not in record:
        return {"answer": "", "refused": True, "citations": [], "latency_ms": 0.0, "prompt_tokens": 0,
                "completion_tokens": 0, "cost": 0.0, "route": "student", "reason": "no_student"}
    generation, text = record["student"], record["student"].text.strip()
    return {"answer": "" if text == REFUSAL_COMPLETION else text, "refused": text == REFUSAL_COMPLETION,
            "citations": record.get("student_citations", record["intent_citations"]), "latency_ms": record["student_ms"],
            "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.completion_tokens,
            "cost": local_cost(record["student_ms"], prices), "route": "student", "reason": "student"}


def _open_book_outcome(record: dict, covered: bool, answers: dict, prices, gate) -> dict:
    """Replay where covered, else the open-book student where the router would serve it, else RAG
    (after whatever the student spent)."""
    from distill.serve.routes import BEFORE_COVERAGE

    replayed = _cache_outcome(record, covered, answers, prices, "replay")
    if replayed["route"] == "replay" or record["failed"] in BEFORE_COVERAGE:
        return replayed
    reason = open_book_route(record, gate)
    if reason == "uncalibrated":  # no student route at all, as in the router
        return replayed
    if reason == "served":
        outcome = _student_outcome(record, prices)
        spent = record["router_ms"] + record["student_ms"]
        outcome.update(latency_ms=spent, cost=local_cost(spent, prices), reason="served")
        return outcome
    book = record.get("open_book")  # the student was asked when the router would have asked it
    generated = gate is not None and book is not None and book["refusal"] is None and gate.before_generating() is None
    spent = record["router_ms"] + (record.get("student_ms", 0.0) if generated else 0.0)
    return _fallback(record, prices, reason, spent)


def score_outcomes(items: list[EvalItem], outcomes: list[dict], teachers: list[dict], context: dict) -> dict:
    """Every metric of one system over the evaluation set, weighted by how often each question was
    asked; `teachers` are the teacher's outcomes for the same items."""
    if not items:
        return {"traffic": 0}
    weights = np.array([i.weight for i in items], dtype=float)
    texts, prices = context["chunk_texts"], context["prices"]
    teacher_answers = [t["answer"] for t in teachers]
    served = [(_served_error(o, t, context["success_f1"]), w) for o, t, w in zip(outcomes, teachers, weights)
              if o["route"] in SERVED_ROUTES]

    def mean(pairs) -> float | None:
        pairs = [(v, w) for v, w in pairs if v is not None]
        return round(float(np.average([v for v, _ in pairs], weights=[w for _, w in pairs])), 4) if pairs else None

    rows = list(zip(items, outcomes, teacher_answers, weights))
    graded = [(i, o, w) for i, o, _, w in rows if i.gold_answers is not None]
    f1 = {id(o): _gold_f1(i, o) for i, o, _ in graded}
    agreement = [(1.0 if o["refused"] and not t else token_f1(o["answer"], t), w) for _, o, t, w in rows]
    success = [_success(i, o, t, f1.get(id(o)), prices.success_f1) for i, o, t, _ in rows]
    cost = float(np.dot([o["cost"] for o in outcomes], weights))
    latency = np.repeat([o["latency_ms"] for o in outcomes], weights.astype(int))
    answered = [(i, o, w) for i, o, _, w in rows if not o["refused"] and o["citations"]]
    scores = {
        "f1_vs_gold": mean((f1[id(o)], w) for _, o, w in graded),
        "exact_vs_gold": mean((float(not o["refused"] and any(normalize(o["answer"]) == normalize(g) for g in i.gold_answers))
                               if not i.should_refuse else float(o["refused"]), w) for i, o, w in graded),
        "agreement": mean(agreement),
        "citation_correct": mean((_citation_correct(i, o, texts), w) for i, o, w in answered if i.gold_answers),
        "groundedness": mean((_grounded(o, texts), w) for _, o, w in answered),
        "refusal_correct": mean((float(o["refused"] == bool(i.should_refuse)), w) for i, o, w in graded),
        "refused": mean((float(o["refused"]), w) for _, o, _, w in rows),
        "format_valid": mean((float(_format_valid(o)), w) for _, o, _, w in rows),
        "latency_p50_ms": round(float(np.percentile(latency, 50)), 1),
        "latency_p95_ms": round(float(np.percentile(latency, 95)), 1),
        "prompt_tokens": mean((o["prompt_tokens"], w) for _, o, _, w in rows),
        "completion_tokens": mean((o["completion_tokens"], w) for _, o, _, w in rows),
        "success": mean(zip(success, weights)),
        "cost_total_usd": round(cost, 6),
        "traffic": int(weights.sum()),
        "served_share": mean((float(o["route"] in SERVED_ROUTES), w) for _, o, _, w in rows),
        "replay_share": mean((float(o["route"] in ("replay", "cache")), w) for _, o, _, w in rows),
        "student_share": mean((float(o["route"] == "student"), w) for _, o, _, w in rows),  # the student generated
        "error_rate": mean(served),
        "served_errors": int(sum(w for e, w in served if e)),
        "reasons": dict(Counter(o["reason"] for o, w in zip(outcomes, weights) for _ in range(int(w))).most_common()),
    }
    successes = float(np.dot(success, weights))
    scores["cost_per_success_usd"] = round(cost / successes, 8) if successes else None
    return scores


def _served_error(outcome: dict, teacher: dict, success_f1: float) -> float:
    """1.0 when an answer served without RAG is wrong by RAG's own answer: another document and a
    token F1 below `success_f1` (calibrate.agrees, the label the router's decision is calibrated on)."""
    from distill.learn.coverage import agrees
    from distill.rag.corpus import cited_document

    def evidence(o: dict) -> dict:
        return {"doc": cited_document(o["citations"]), "answer": o["answer"], "refused": o["refused"]}
    return float(not agrees(evidence(outcome), evidence(teacher), success_f1))


def _gold_f1(item: EvalItem, outcome: dict) -> float:
    if item.should_refuse:
        return float(outcome["refused"])
    return 0.0 if outcome["refused"] else best_f1(outcome["answer"], item.gold_answers)


def _success(item: EvalItem, outcome: dict, teacher_answer: str, f1: float | None, threshold: float) -> float:
    if f1 is not None:
        return float(f1 >= threshold)
    if outcome["refused"]:
        return float(not teacher_answer)
    return float(token_f1(outcome["answer"], teacher_answer) >= threshold)


def _citation_correct(item: EvalItem, outcome: dict, texts: dict[str, str]) -> float:
    """A cited chunk is one of the gold chunks or documents, or holds a gold answer word for word."""
    from distill.rag.corpus import chunk_doc_version

    for chunk_id in outcome["citations"]:
        if chunk_id in item.gold_chunk_ids or chunk_doc_version(chunk_id)[0] in item.gold_doc_ids:
            return 1.0
        if any(normalize(g) and normalize(g) in normalize(texts.get(chunk_id, "")) for g in item.gold_answers):
            return 1.0
    return 0.0


def _grounded(outcome: dict, texts: dict[str, str]) -> float:
    from distill.rag.answers import groundedness

    return groundedness(outcome["answer"], [{"text": texts.get(c, "")} for c in outcome["citations"]])


def _format_valid(outcome: dict) -> bool:
    """An answer or a refusal, on one line, without chat-template tokens, under 600 characters."""
    text = outcome["answer"]
    if outcome["refused"]:
        return True
    return bool(text.strip()) and "\n" not in text.strip() and "<|" not in text and "[INST" not in text and len(text) < 600


def _retrieval(items: list[EvalItem], records: list[dict], texts: dict[str, str]) -> dict:
    """The teacher's retrieval against gold: recall@1/@k and MRR over answerable gold questions. A
    retrieved chunk is relevant if it is a gold chunk, belongs to a gold document, or holds a gold answer."""
    from distill.rag.corpus import chunk_doc_version

    ranks = []
    for item, record in zip(items, records):
        if not item.gold_answers or item.should_refuse:
            continue
        rank = next((n for n, c in enumerate(record["teacher"].retrieved, 1) if c in item.gold_chunk_ids
                     or chunk_doc_version(c)[0] in item.gold_doc_ids
                     or (not item.gold_doc_ids and not item.gold_chunk_ids
                         and any(normalize(g) in normalize(texts.get(c, "")) for g in item.gold_answers))), None)
        ranks.append(rank)
    if not ranks:
        return {}
    k = max((len(r["teacher"].retrieved) for r in records), default=0)
    return {"k": k, **rank_scores(ranks, "recall_at_k")}


def _slices(items: list[EvalItem], outcomes: dict, teachers: list[dict], context: dict, top: int = 8) -> dict:
    """Per scope (the `top` most asked) and per category: each system's quality and the student's share."""
    slices = {}
    for kind, key in (("scope", lambda i: i.scope or "(none)"), ("category", lambda i: i.category)):
        groups: dict[str, list[int]] = {}
        for n, item in enumerate(items):
            if key(item) is not None:
                groups.setdefault(key(item), []).append(n)
        ranked = sorted(groups.items(), key=lambda kv: -sum(items[n].weight for n in kv[1]))[:top]
        slices[kind] = {
            name: {"traffic": sum(items[n].weight for n in members),
                   **{system: _quality(score_outcomes([items[n] for n in members], [outs[n] for n in members],
                                                      [teachers[n] for n in members], context))
                      for system, outs in outcomes.items()}}
            for name, members in ranked}
    return slices


def _quality(scores: dict) -> dict:
    return {"quality": scores["f1_vs_gold"] if scores["f1_vs_gold"] is not None else scores["agreement"],
            "served_share": scores["served_share"]}


def _intent_answers(workspace: Workspace, manifest: dict) -> dict[str, str | None]:
    """The answers a student's intents were trained on (a refusal is None): what a cache would replay."""
    with TraceStore(workspace.traces_db) as store:
        answers = store.intent_answers(manifest.get("curation_run_id") or "")
    return {c["intent_id"]: answers.get(c["intent_id"]) for c in manifest.get("intents", []) if c["intent_id"] in answers}


def _token_counter(router):
    """Counts a chat prompt's tokens with the student's tokenizer (the closest at hand to what an
    LLM teacher would bill); without a student, 4 tokens per 3 words."""
    tokenizer = getattr(router.student, "tokenizer", None)

    def count(messages: list[dict]) -> int:
        text = "\n".join(m["content"] for m in messages)
        return len(tokenizer(text)["input_ids"]) if tokenizer else len(text.split()) * 4 // 3
    return count


def run_eval(workspace: Workspace, config, gold: Path | None = None, on_gold: bool = False,
             limit: int | None = None, progress: bool = True) -> tuple[str, dict]:
    """`distill eval`: build the evaluation set, score every system, store the figures in `eval_runs`.
    Returns (run_id, figures)."""
    import uuid

    limit = limit or config.eval.max_queries
    if on_gold:
        if gold is None:
            raise DistillError("--on-gold needs --gold FILE")
        items, source = gold_items(gold)[:limit], f"gold:{gold}"
    else:
        items = held_out_items(workspace, load_gold_rows(gold) if gold else None, limit=limit)
        source = "held-out traffic" + (f" + gold:{gold}" if gold else "")
    figures = {"source": source, **evaluate_systems(workspace, config, items, progress)}
    run_id = uuid.uuid4().hex
    with TraceStore(workspace.traces_db) as store:
        figures["ratings"] = store.ratings_by_route()  # what users said, beside the teacher-agreement figures
        store.add_eval_run(run_id, source, figures["student_version"], len(items), figures)
    return run_id, figures


def run_suite(router, cases: list[dict], success_f1: float) -> list[dict]:
    """Route every case (the real `Router.answer`) and say which expectation, if any, failed."""
    results = []
    for case in cases:
        routed = router.answer(case["query"], case.get("scope"))
        problems = []
        if case.get("expect_route") and routed.route != case["expect_route"]:
            problems.append(f"route {routed.route} ({routed.reason}), expected {case['expect_route']}")
        if case.get("expect_reason") and routed.reason != case["expect_reason"]:
            problems.append(f"reason {routed.reason}, expected {case['expect_reason']}")
        if case.get("expect_refusal") is not None and bool(routed.refused) != bool(case["expect_refusal"]):
            problems.append("refused" if routed.refused else "answered, expected a refusal")
        if case.get("expect_answer"):
            expected = case["expect_answer"]
            if normalize(expected) not in normalize(routed.answer) and token_f1(routed.answer, expected) < success_f1:
                problems.append(f"answer {routed.answer!r} does not match {expected!r}")
        results.append({"query": case["query"], "scope": case.get("scope"), "route": routed.route,
                        "reason": routed.reason, "answer": routed.answer, "passed": not problems,
                        "problems": "; ".join(problems)})
    return results
