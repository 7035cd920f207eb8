"""The confidence filter: choose what the student learns, and record why for every trace.

1. Intents. The distinct normalized wordings of each scope are embedded once (cost grows with
   distinct queries, not traces) and joined into an intent when their cosine similarity reaches
   `curate.intent_threshold` (FAISS nearest neighbours, then union-find).
2. Split by time. Traces from the last `curate.eval_days` days are held out for evaluation; the
   rest are training candidates. Eval traces whose exact wording also occurs in training are counted
   and reported (`leaked_eval_traces`), never silently mixed.
3. Rules. Each training candidate is checked against named rules in a fixed order; the first that
   fails is its `reason`:

       not_standalone                                  a follow-up only a rule could rewrite (conversation.py)
       high_risk, injection, pii                       safety: never trained on, whatever else holds
       rated_wrong                                     users rated this answer to this wording wrong
                                                       (feedback.py: weighed over sources, any route)
       refused, citation_invalid, stale_citation,      the trace itself
       ungrounded, low_confidence
       infrequent, inconsistent, minority_answer       its intent: asked often enough, answered the
                                                       same way, and this trace gave that answer

   A refused trace is kept as a refusal example (reason `refusal_example`) when its whole intent
   is consistently refused and frequent, and no wording like it (cosine at least
   `curate.intent_threshold`) is answered: a need the teacher answers in other words is not out of
   scope, and its refusals are rejected as `answered_elsewhere`. Eval traces only go through the
   first two rows.
4. Output. One `curation` row per trace (`train`, `eval` or `reject` with the reason), a `intents`
   row per intent, a `curation_runs` row with the config, all written in one transaction; and the
   training set as a Hugging Face dataset (prompt/completion in chat form, one example per intent
   and wording) saved to `<home>/datasets/<run_id>/`, with a content hash and its trace ids.

    result = curate(workspace, config)
    result.decisions["reject"]["infrequent"], result.examples  # (412, 96)
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from distill.config import Config, CurateConfig
from distill.errors import DistillError
from distill.learn import open_book
from distill.learn.coverage import COVERAGE_FILE, export_coverage_evidence
from distill.learn.intents import REFUSED, PiiDetector, cluster_vectors, normalize_answer, wording_evidence
from distill.metrics import normalize_query
from distill.rag import answerability
from distill.rag.corpus import chunk_doc_version, cited_document, compile_patterns, first_match
from distill.rag.embed import embed, load_embedder
from distill.rag.index import corpus_path
from distill.rag.teacher import ensure_answerability_fitted
from distill.store.chunks import CorpusStore
from distill.store.feedback import Verdicts, answer_key
from distill.store.lake import TraceLake
from distill.store.segments import has_traces
from distill.store.traces import TraceStore
from distill.workspace import Workspace

CONVERSATION_RULES = ("not_standalone",)  # a follow-up joined with its conversation (rag/conversation.py): RAG's alone


SAFETY_RULES = ("high_risk", "injection", "pii")


FEEDBACK_RULES = ("rated_wrong",)  # users rated this answer to this wording wrong (feedback.py)


TRACE_RULES = ("refused", "answered_elsewhere", "citation_invalid", "stale_citation", "ungrounded", "low_confidence")


INTENT_RULES = ("infrequent", "inconsistent", "minority_answer")


RULES = CONVERSATION_RULES + SAFETY_RULES + FEEDBACK_RULES + TRACE_RULES + INTENT_RULES


@dataclass
class CurationResult:
    run_id: str
    traces_seen: int
    intents: int
    cutoff: datetime | None
    decisions: dict[str, Counter] = field(default_factory=dict)
    leaked_eval_traces: int = 0
    examples: int = 0
    dataset_path: Path | None = None
    dataset_hash: str | None = None
    rewordings_written: int = 0  # by the LLM (`curate.rewordings`), before the teacher checked them
    rewordings_kept: int = 0  # answered by RAG the way their intents are: training examples
    cutoff_basis: dict = field(default_factory=dict)  # given, or counted from which newest question (evaluation_cutoff)
    calibration: answerability.Calibration | None = None  # the teacher's threshold, when this run fitted it again

    @property
    def train(self) -> int:
        return sum(self.decisions.get("train", Counter()).values())

    def most_rejected(self) -> tuple[str, int] | None:
        rejected = self.decisions.get("reject", Counter())
        return rejected.most_common(1)[0] if rejected else None


def _validate(config: CurateConfig) -> None:
    for name in ("intent_threshold", "min_agreement", "min_groundedness", "pii_min_score"):
        value = getattr(config, name)
        if not 0.0 <= value <= 1.0:
            raise DistillError(f"setting 'curate.{name}' must be between 0 and 1 (got {value})")
    for name in ("window_days", "min_count"):
        if getattr(config, name) < 1:
            raise DistillError(f"setting 'curate.{name}' must be at least 1 (got {getattr(config, name)})")
    for name in ("eval_days", "rewordings"):
        if getattr(config, name) < 0:
            raise DistillError(f"setting 'curate.{name}' must be 0 or more (got {getattr(config, name)})")


def _trace_rule(trace: dict, config: CurateConfig, latest: dict[str, int]) -> str | None:
    """The first per-trace quality rule the trace fails (refusals are handled by the caller)."""
    if not trace["citations"] or not trace["citation_valid"]:
        return "citation_invalid"
    if any(latest.get(c["doc_id"]) != c["version"] for c in trace["cited_doc_versions"]):
        return "stale_citation"
    if (trace["groundedness"] or 0.0) < config.min_groundedness:
        return "ungrounded"
    retrieval_weak = trace["top_score"] is not None and (  # an imported trace has no scores of ours
        trace["top_score"] < config.min_top_score_to_train or (trace["score_margin"] or 0.0) < config.min_margin)
    if retrieval_weak or (trace["mean_logprob"] is not None and trace["mean_logprob"] < config.min_logprob):
        return "low_confidence"
    return None


def curate(workspace: Workspace, config: Config, require_min: int | None = None,
           now: datetime | None = None, from_lake: bool = False, cutoff: datetime | None = None) -> CurationResult:
    """Intent, split, apply the rules, store the decisions and export the training set.

    The evaluation cutoff is `curate.eval_days` before the newest question of the log (collected,
    imported or served; questions asked with `distill ask` are tried answers, not traffic, and do not
    count), unless `cutoff` is given.

    With `require_min`, fewer than that many training traces is an error (the run is still stored,
    so `--explain` can show why). With `from_lake`, the traces are read from the DuckLake catalog
    of `config.lake` (every machine's pushed traces) by the same SQL; the decisions are stored in
    this workspace's trace store, which first copies in the lake traces it lacks so every decision
    can be joined to its trace."""
    cfg = config.curate
    _validate(cfg)
    if not from_lake and not has_traces(workspace.traces_db):
        raise DistillError(f"no trace store at {workspace.traces_db}; run `distill collect` first")
    if from_lake:
        lake = workspace.lake(config)
        with TraceLake(lake) as reader:
            traces = reader.curation_input()
        with TraceStore(workspace.traces_db) as store:
            store.pull_from_lake(lake)
        source = lake.catalog
    else:
        with TraceStore(workspace.traces_db) as store:
            traces = store.curation_input()
        source = workspace.traces_db
    with TraceStore(workspace.traces_db) as store:
        ratings = store.feedback()
    if not traces:
        raise DistillError(f"the trace store {source} has no teacher traces; run `distill collect` or `distill import`")
    latest, flagged, cited_text = {}, set(), {}
    if corpus_path(workspace).exists():  # absent when the traces come from a RAG system of the team's own
        corpus = CorpusStore(corpus_path(workspace), read_only=True)
        try:
            latest, flagged = corpus.document_versions(), corpus.flagged_chunk_ids()
            cited_text = corpus.chunk_texts({c for t in traces for c in t["citations"]})
        finally:
            corpus.close()
    latest = {**latest_cited_versions(traces), **latest}  # documents not ingested here: as last seen
    # The teacher's threshold, fitted again if the corpus changed since (never from the traffic).
    calibration = ensure_answerability_fitted(workspace, config) if corpus_path(workspace).exists() else None
    verdicts = Verdicts(config.feedback, ratings)
    rated_wrong = {t["trace_id"] for t in traces if verdicts.wrong(answer_key(t["scope"], t["query"], t["answer"]))}
    result = _decide(traces, config, latest, flagged, cited_text, cutoff, rated_wrong)
    dataset_path, dataset_hash, examples, rewordings = _export(workspace, result, traces, config)
    run = result["run"]
    run.update(dataset_path=str(dataset_path) if dataset_path else None, dataset_hash=dataset_hash,
               examples=examples, created_at=now or datetime.now(timezone.utc), config=json.dumps(asdict(cfg)))
    with TraceStore(workspace.traces_db) as store:  # held only to write: services and `sql` wait less
        store.write_curation(run, result["intents"], result["decisions"])
    counts: dict[str, Counter] = defaultdict(Counter)
    for d in result["decisions"]:
        counts[d["decision"]][d["reason"]] += 1
    curation = CurationResult(run_id=run["run_id"], traces_seen=len(traces), intents=len(result["intents"]),
                              cutoff=run["cutoff"], decisions=dict(counts),
                              leaked_eval_traces=run["leaked_eval_traces"], examples=examples,
                              dataset_path=dataset_path, dataset_hash=dataset_hash,
                              rewordings_written=rewordings[0], rewordings_kept=rewordings[1],
                              cutoff_basis=result["cutoff_basis"], calibration=calibration)
    if require_min is not None and curation.train < require_min:
        reason, count = curation.most_rejected() or ("none", 0)
        raise DistillError(f"only {curation.train} traces passed the rules, {require_min} required; rule '{reason}' "
                           f"rejected most ({count}): relax its setting in [curate] or collect more traffic")
    return curation


def latest_cited_versions(traces: list[dict]) -> dict[str, int]:
    """Each cited document's version in the latest trace that cites it. For a RAG system whose
    documents are not ingested here (external.py) this is the newest version known: a context whose
    text changed has a new content-hash version, and the traces citing the old one are stale."""
    latest: dict[str, int] = {}
    for trace in traces:  # oldest first
        for cited in trace["cited_doc_versions"]:
            latest[cited["doc_id"]] = cited["version"]
    return latest


def evaluation_cutoff(traces: list[dict], eval_days: int) -> tuple[datetime, datetime, int]:
    """(cutoff, the newest question it was counted from, questions asked with `distill ask` that
    were not counted): `distill ask` tries the system out, and its questions, dated today, would
    otherwise move a collected log's cutoff to today and leave every question of the log outside
    the frequency window."""
    interactive = [t for t in traces if t.get("origin") == "ask"]
    counted = [t for t in traces if t.get("origin") != "ask"] or traces
    newest = max(t["asked_at"] for t in counted)
    cutoff = newest - timedelta(days=eval_days) if eval_days else newest + timedelta(seconds=1)
    return cutoff, newest, len(interactive) if counted is not traces else 0


def _decide(traces: list[dict], config: Config, latest: dict[str, int], flagged: set[str],
            cited_text: dict[str, str], cutoff: datetime | None = None, rated_wrong: frozenset[str] = frozenset()) -> dict:
    cfg = config.curate
    risk = compile_patterns(cfg.high_risk_patterns, "curate.high_risk_patterns")
    injection = compile_patterns(config.corpus.injection_patterns)
    pii = PiiDetector(cfg.pii_entities, cfg.pii_min_score)

    basis = {"given": cutoff is not None}
    if cutoff is None:
        cutoff, basis["newest"], basis["ask_questions_ignored"] = evaluation_cutoff(traces, cfg.eval_days)
    window_start = cutoff - timedelta(days=cfg.window_days)

    keys = [(t["scope"], normalize_query(t["query"])) for t in traces]
    distinct = sorted(set(keys), key=str)
    vectors = embed(load_embedder(config.index.embedding_model), [w for _, w in distinct], batch_size=128) \
        if distinct else np.zeros((0, 1))
    evidence = wording_evidence(traces, keys, distinct)
    # An intent: wordings answered from the same document with the same answer. Its need (the same
    # document, any answer) is what the frequency rule counts: a need the teacher answers with two
    # sentences of one document is asked as often as one answered with one.
    intent_of = cluster_vectors(distinct, vectors, cfg.intent_threshold, evidence)
    need_of = cluster_vectors(distinct, vectors, cfg.intent_threshold, [doc for doc, _ in evidence])
    # Wordings alike by their words alone: a refused one whose like is answered is not out of scope.
    alike = cluster_vectors(distinct, vectors, cfg.intent_threshold)
    answered_alike = {alike[w] for w, (_, answer) in zip(distinct, evidence) if answer != REFUSED}
    members: dict[int, list[int]] = defaultdict(list)
    need_frequency: Counter = Counter()
    for i, key in enumerate(keys):
        members[intent_of[key]].append(i)
        need_frequency[need_of[key]] += window_start <= traces[i]["asked_at"] < cutoff

    intents, intent_id, facts = [], {}, {}
    for number, indices in members.items():
        wordings = Counter(keys[i][1] for i in indices)
        representative = wordings.most_common(1)[0][0]
        scope = keys[indices[0]][0]
        cid = hashlib.sha256(f"{scope}\x1f{representative}".encode()).hexdigest()[:16]
        train_side = [i for i in indices if window_start <= traces[i]["asked_at"] < cutoff]
        labels = Counter(REFUSED if traces[i]["refused"] else normalize_answer(traces[i]["answer"]) for i in train_side)
        majority, count = labels.most_common(1)[0] if labels else (None, 0)
        agreement = count / len(train_side) if train_side else 0.0
        answer = next((traces[i]["answer"] for i in train_side if not traces[i]["refused"]
                       and normalize_answer(traces[i]["answer"]) == majority), None)
        cited = {(c["doc_id"], c["version"]) for i in train_side for c in traces[i]["cited_doc_versions"]}
        retrieved = {chunk_doc_version(chunk_id) for i in train_side for chunk_id in traces[i]["retrieved"]}
        frequency = need_frequency[need_of[keys[indices[0]]]]
        intent_id[number] = cid
        facts[number] = {"majority": majority, "agreement": agreement, "frequency": frequency, "answers": count}
        intents.append({"intent_id": cid, "scope": scope, "representative": representative,
                         "wordings": sorted(wordings), "traces": len(indices), "frequency": frequency,
                         "answer": answer if majority != REFUSED else None, "agreement": agreement,
                         "cited_doc_versions": [{"doc_id": d, "version": v} for d, v in sorted(cited)],
                         "retrieved_doc_versions": [{"doc_id": d, "version": v} for d, v in sorted(retrieved)],
                         "trained": False})

    train_wordings = {keys[i] for i, t in enumerate(traces) if t["asked_at"] < cutoff}
    decisions, leaked = [], 0
    for i, trace in enumerate(traces):
        number = intent_of[keys[i]]
        reason = "not_standalone" if trace.get("rewrite_method") == "rules" else \
            _safety_rule(trace, cfg, risk, injection, pii, flagged, cited_text)
        if trace["asked_at"] >= cutoff:
            decision = "reject" if reason else "eval"
            leaked += decision == "eval" and keys[i] in train_wordings
        elif reason:
            decision = "reject"
        elif trace["trace_id"] in rated_wrong:
            decision, reason = "reject", "rated_wrong"
        elif trace["asked_at"] < window_start:
            decision, reason = "reject", "infrequent"  # outside the frequency window: too old to count
        else:
            decision, reason = _quality_decision(trace, facts[number], cfg, latest,
                                                 answered_alike=alike[keys[i]] in answered_alike)
        decisions.append({"trace_id": trace["trace_id"], "intent_id": intent_id[number], "decision": decision,
                          "reason": reason})
    trained = {d["intent_id"] for d in decisions if d["decision"] == "train"}
    for intent in intents:
        intent["trained"] = intent["intent_id"] in trained
    run = {"run_id": uuid.uuid4().hex, "cutoff": cutoff, "traces_seen": len(traces), "intents": len(intents),
           "train": sum(d["decision"] == "train" for d in decisions),
           "eval": sum(d["decision"] == "eval" for d in decisions),
           "rejected": sum(d["decision"] == "reject" for d in decisions), "leaked_eval_traces": leaked}
    return {"run": run, "intents": intents, "decisions": decisions, "cutoff_basis": basis}


def _safety_rule(trace: dict, cfg: CurateConfig, risk, injection, pii: PiiDetector, flagged: set[str],
                 cited_text: dict[str, str]) -> str | None:
    if trace["scope"] in cfg.high_risk_scopes or first_match(trace["query"], risk):
        return "high_risk"
    if first_match(trace["query"], injection) or any(c in flagged for c in trace["citations"]):
        return "injection"
    published = "\n".join(cited_text.get(c, "") for c in trace["citations"])
    if pii.find(trace["query"]) or pii.find(trace["answer"], published):
        return "pii"
    return None


def _quality_decision(trace: dict, intent: dict, cfg: CurateConfig, latest: dict[str, int],
                      answered_alike: bool = False) -> tuple[str, str | None]:
    consistent = intent["agreement"] >= cfg.min_agreement
    # asked often enough (its need), and its answer given more than once (a one-off answer to a
    # frequent need's neighbour is no evidence that the teacher answers it that way)
    frequent = intent["frequency"] >= cfg.min_count and intent["answers"] >= min(2, cfg.min_count)
    if trace["refused"]:
        if answered_alike:
            return "reject", "answered_elsewhere"
        if intent["majority"] == REFUSED and consistent and frequent:
            return "train", "refusal_example"
        return "reject", "refused"
    if reason := _trace_rule(trace, cfg, latest):
        return "reject", reason
    if not frequent:
        return "reject", "infrequent"
    if not consistent:
        return "reject", "inconsistent"
    if normalize_answer(trace["answer"]) != intent["majority"]:
        return "reject", "minority_answer"
    return "train", None


def _export(workspace: Workspace, result: dict, traces: list[dict], config: Config):
    """Write the training set (one example per intent and wording, plus the verified rewordings when
    `curate.rewordings` asks for them) as a `datasets` folder, with the router's calibration evidence
    beside it. Returns the folder, its content hash, the examples and (rewordings written, kept)."""
    cfg = config.curate
    by_id = {t["trace_id"]: t for t in traces}
    intents = {c["intent_id"]: c for c in result["intents"]}
    grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
    for decision in result["decisions"]:
        if decision["decision"] == "train":
            trace = by_id[decision["trace_id"]]
            grouped[(decision["intent_id"], normalize_query(trace["query"]))].append(trace["trace_id"])
    rows = []
    for (cid, _), trace_ids in sorted(grouped.items()):
        first = by_id[trace_ids[0]]
        rows.append(_example(intents[cid], first["scope"] or "", first["query"].strip(), list(first["citations"]),
                             sorted(trace_ids)))
    if not rows:
        return None, None, 0, (0, 0)
    rewordings, written = _rewordings(workspace, config, rows, intents) if cfg.rewordings else ([], 0)
    rows += [_example(intents[r.intent_id], r.scope, r.text, r.citations, [], r.written_from) for r in rewordings]
    retrieved = {(r["scope"], r["query"]): list(by_id[r["trace_ids"][0]]["retrieved"] or []) for r in rows
                 if r["trace_ids"]}
    opened = _open_book(workspace, config, rows, intents, retrieved)
    template, mode, skipped = open_book.DEFAULT_TEMPLATE, "open_book", None
    if opened:
        rows = opened
    else:  # a team's own RAG: its contexts are not in a corpus here, so the version only replays (train.py)
        template, mode = None, "replay"
        skipped = "no trained wording's evidence is in this workspace's corpus: the version replays, no student is trained"
    import datasets

    datasets.disable_progress_bars()
    digest = hashlib.sha256(json.dumps([[r["prompt"], r["completion"]] for r in rows], sort_keys=True).encode())
    target = workspace.home / "datasets" / result["run"]["run_id"]
    datasets.Dataset.from_list(rows).save_to_disk(str(target))
    (target / "distill.json").write_text(json.dumps({"run_id": result["run"]["run_id"],
                                                     "content_hash": digest.hexdigest(),
                                                     "prompt_template": template,
                                                     "student_mode": mode, "open_book_skipped": skipped,
                                                     "evidence": {"chunks": config.student.evidence_chunks,
                                                                  "words": config.student.evidence_words},
                                                     "examples": len(rows),
                                                     "rewordings": {"written": written, "kept": len(rewordings)}},
                                                    indent=2))
    _export_coverage_evidence(target / COVERAGE_FILE, result, traces, rows, config.eval.success_f1)
    return target, digest.hexdigest(), len(rows), (written, len(rewordings))


def _example(intent: dict, scope: str, query: str, citations: list[str], trace_ids: list[str],
             written_from: str = "") -> dict:
    """One wording of the intent (asked in `trace_ids`, or a rewording of the wording `written_from`)
    with the intent's agreed answer: what replay answers it, and what `_open_book` turns into the
    student's examples (the prompt here is the bare question, the completion the answer)."""
    completion = intent["answer"] if intent["answer"] is not None else REFUSAL_COMPLETION
    return {"prompt": [{"role": "user", "content": query}],
            "completion": [{"role": "assistant", "content": completion}], "answer": completion,
            "intent_id": intent["intent_id"], "scope": scope, "query": query, "citations": citations,
            "trace_ids": trace_ids, "source": "rewording" if written_from else "trace", "written_from": written_from,
            "cited_doc_versions": intent["cited_doc_versions"],
            "retrieved_doc_versions": intent["retrieved_doc_versions"]}


def _open_book(workspace: Workspace, config: Config, rows: list[dict], intents: dict,
               retrieved: dict[tuple[str, str], list[str]]) -> list[dict]:
    """The wordings turned open-book (open_book.examples): each wording with the chunks its
    trace retrieved, at that trace's versions. A rewording reads what its original wording's trace
    read. Wordings whose evidence is not in the corpus (a team's own RAG) are left out."""
    if not corpus_path(workspace).exists():
        return []
    wanted = {c for ids in retrieved.values() for c in ids} | {c for r in rows for c in r["citations"][:1]}
    corpus = CorpusStore(corpus_path(workspace), read_only=True)
    try:
        chunks = corpus.chunks_by_id(wanted)
    finally:
        corpus.close()
    student, train = config.student, config.train
    out = []
    for row in rows:
        answer = intents[row["intent_id"]]["answer"]
        read = retrieved.get((row["scope"], row["query"] if row["source"] == "trace" else row["written_from"]), [])
        for example in open_book.examples(row["query"], answer, (row["citations"] or [None])[0], read, chunks,
                                          student.evidence_chunks, student.evidence_words, train.no_evidence_share,
                                          train.no_evidence_target, open_book.DEFAULT_TEMPLATE):
            out.append({**row, **example})
    return out


def _rewordings(workspace: Workspace, config: Config, rows: list[dict], intents: dict) -> tuple[list, int]:
    """The verified rewordings of the answered intents' trained wordings (see reword.py)."""
    from distill.learn.reword import verified_rewordings

    wordings = []
    for row in rows:
        answer = intents[row["intent_id"]]["answer"]
        if answer is not None and row["citations"]:
            wordings.append({"query": row["query"], "scope": row["scope"], "intent_id": row["intent_id"],
                             "doc": cited_document(row["citations"]), "answer": normalize_answer(answer)})
    return verified_rewordings(workspace, config, wordings)


def _export_coverage_evidence(path: Path, result: dict, traces: list[dict], rows: list[dict], success_f1: float) -> None:
    """Every wording asked before the cutoff, with what the teacher answered it from and with, for
    the router's coverage decision (see coverage.py); wordings a safety rule rejected stay out.
    Verified rewordings are trained wordings too, marked with the wording they were written from."""
    decisions = {d["trace_id"]: d for d in result["decisions"]}
    before = [t for t in traces if decisions[t["trace_id"]]["decision"] != "eval"]
    keys = [(t["scope"] or "", normalize_query(t["query"])) for t in before]
    unsafe = {k for t, k in zip(before, keys) if decisions[t["trace_id"]]["reason"] in CONVERSATION_RULES + SAFETY_RULES}
    wordings = sorted(set(keys) - unsafe)
    evidence = dict(zip(wordings, wording_evidence([t for t, k in zip(before, keys) if k not in unsafe],
                                                   [k for k in keys if k not in unsafe], wordings)))
    text = {k: t["query"].strip() for t, k in zip(before, keys)}
    asked = [r for r in rows if r["source"] == "trace"]
    trained = {(r["scope"], normalize_query(r["query"])): r["intent_id"] for r in asked}
    by_id = {c["intent_id"]: c for c in result["intents"]}
    intents = {}
    for cid in set(trained.values()):
        answer = by_id[cid]["answer"]
        docs = Counter(evidence[k][0] for k, c in trained.items() if c == cid and evidence[k][0])
        intents[cid] = {"doc": docs.most_common(1)[0][0] if docs else None,
                        "answer": normalize_answer(answer) if answer is not None else "", "refused": answer is None}
    rows_out = [{"scope": scope, "wording": wording, "text": text[(scope, wording)],
                 "intent_id": trained.get((scope, wording)), "doc": evidence[(scope, wording)][0],
                 "answer": "" if evidence[(scope, wording)][1] == REFUSED else evidence[(scope, wording)][1],
                 "refused": evidence[(scope, wording)][1] == REFUSED}
                for scope, wording in wordings]
    rows_out += [{"scope": r["scope"], "wording": normalize_query(r["query"]), "text": r["query"],
                  "intent_id": r["intent_id"], "doc": cited_document(r["citations"]),
                  "answer": intents[r["intent_id"]]["answer"], "refused": False, "written_from": r["written_from"]}
                 for r in rows if r["source"] == "rewording"]
    export_coverage_evidence(path, intents, rows_out, success_f1)


REFUSAL_COMPLETION = open_book.REFUSAL
