"""The open-book student against replay and RAG, on traffic it never saw: does it serve what replay cannot?

    python scripts/bench_open_book.py                      # PolicyQA, stand-in LLM teacher
    python scripts/bench_open_book.py --teacher extractive # the embedded default teacher
    python scripts/bench_open_book.py --data stackfaq       # StackFAQ threads, rephrasings as wordings
    python scripts/bench_open_book.py --data covid          # the COVID FAQ, version 2 as the changed documents
    python scripts/bench_open_book.py --data other_policies.json --per-group 60
    python scripts/bench_open_book.py --set train.method='"lora"' --tag lora

PolicyQA's websites are shuffled (seed 0) and halved into A and B. Four weeks of Zipf traffic ask
A's questions; `distill nightly` curates it, trains the open-book student (the defaults) and fits
its confidence threshold and costs on the traffic's last week. A held-out week then asks, per group:

    seen       A's questions in wordings the traffic asked
    new        A's questions the traffic never asked
    websites   B's questions: websites the student never saw

and, after a new version of some of A's cited segments is ingested (a sentence added to each), the
`changed` group asks the seen questions whose replayed answer cites those segments.

StackFAQ and the COVID FAQ come as SQuAD files (faq_squad.py; the gold answer is the reply's
lead). StackFAQ is one website, so its threads (intents) are halved instead: `new` is then the
unasked rephrasings of asked threads (novel wordings) and `intents` the threads never asked. The
COVID FAQ's sources are its websites; its `changed` group asks the trained questions whose answer
version 2 changed, after version 2 is ingested, against version 2's answers.

Teachers: `standin` is a stand-in for a team's LLM RAG, NOT an LLM: a local OpenAI-compatible
server behind `teacher.backend = "openai"` reads the evidence distill retrieved (so the student's
evidence is what the teacher read) and answers the dataset's human answer when a gold segment is
among it, else "I don't know.", billed as a hosted LLM (`eval.teacher_pricing = "api"`) at the
default small-model prices and at a large model's list prices. `extractive` is the embedded default.
(The http backend is the team's own retrieval, which distill cannot read, hence openai here.)

Side by side, per group: teacher only; replay (the router without the student route); the base
SmolLM2 reading the same evidence without fine-tuning; the open-book student alone; routed (replay,
then the student, then RAG). Figures: F1 against gold, agreement with the teacher, share served
without the teacher, error among served (against the teacher), p50/p95 latency, cost per success
(F1 against gold at least `eval.success_f1`). The closed-book student is not retrained here: its
figures are bench_paraphrase.py's (the closed-book student was removed: docs/student.md).
"""

from __future__ import annotations

import argparse
import html
import json
import random
import re
import statistics
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from distill import registry
from distill.jobs.eval_sets import load_gold
from distill.jobs.nightly import nightly
from distill.learn.coverage import agrees
from distill.learn.open_book import parse_answer, student_evidence
from distill.learn.student import Student, load_causal_lm
from distill.learn.student_gate import local_cost
from distill.llm.local import local_model
from distill.rag.collect import collect
from distill.rag.corpus import chunk_doc_version, cited_document
from distill.rag.index import ingest
from distill.rag.teacher import Teacher
from distill.rag.traffic import _pairs
from distill.serve.router import Router
from distill.workspace import Workspace

from faq_squad import covid_squad, stackfaq_squad
from policyqa import POLICYQA, ROOT, best_f1, save_results

LARGE_PRICES = (2.50, 10.00)  # a large hosted model's list prices per million tokens (gpt-4o class), 2026
EVIDENCE_ID = re.compile(r'<evidence n="\d+" id="([^"]+)"')
QUESTION = re.compile(r"Question: (.*)\nAnswer", re.S)


# -- the stand-in teacher ------------------------------------------------------------------------

def stand_in(pairs: dict) -> tuple[ThreadingHTTPServer, str]:
    """An OpenAI-compatible server answering with the gold answer found in the evidence it is shown."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            ids = EVIDENCE_ID.findall(prompt)
            blocks = re.findall(r"<evidence[^>]*>\n(.*?)\n</evidence>", prompt, re.S)
            question = html.unescape(QUESTION.search(prompt).group(1).strip())
            answer = "I don't know."
            for chunk_id, block in zip(ids, blocks):
                doc_id = chunk_doc_version(chunk_id)[0]
                entry = pairs.get((doc_id.rsplit("/", 1)[0], question))
                if entry and doc_id in entry["doc_ids"]:
                    text = html.unescape(block)
                    found = [a for a in entry["answers"] if a in text]
                    if found:
                        answer = max(found, key=len)
                        break
            words = len(prompt.split())
            reply = {"id": "standin", "object": "chat.completion", "model": "standin",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}}],
                     "usage": {"prompt_tokens": int(words * 1.3), "completion_tokens": int(len(answer.split()) * 1.3) + 1}}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1"


# -- traffic -------------------------------------------------------------------------------------

def intent(pairs: dict, key: tuple) -> tuple[str, str]:
    """(website, category): what a Zipf draw picks; its questions are the intent's wordings."""
    return key[0], pairs[key]["type"].split("|||")[0]


def halves(pairs: dict) -> tuple[list, list, str]:
    """A's and B's (website, question) keys, and what was halved: websites, or intents when the set
    has one website (StackFAQ)."""
    sites = sorted({w for w, _ in pairs})
    unit = "websites" if len(sites) > 1 else "intents"
    units = sites if unit == "websites" else sorted({intent(pairs, k) for k in pairs})
    random.Random(0).shuffle(units)
    a = set(units[: len(units) // 2])
    side = (lambda k: k[0]) if unit == "websites" else (lambda k: intent(pairs, k))
    return [k for k in sorted(pairs) if side(k) in a], [k for k in sorted(pairs) if side(k) not in a], unit


def dataset(name: str, home: Path) -> tuple[Path, Path | None]:
    """The SQuAD file for `--data`, and for the COVID FAQ its version 2 (the changed documents)."""
    if name == "stackfaq":
        return stackfaq_squad(home / "stackfaq.json"), None
    if name == "covid":
        return covid_squad(home / "covid-v1.json", 1), covid_squad(home / "covid-v2.json", 2)
    return (POLICYQA if name == "policyqa" else Path(name)), None


def traffic(pairs: dict, keys: list, n: int, days: int, seed: int, start: datetime) -> list[dict]:
    """Zipf over (website, category) intents, a wording uniformly within the intent."""
    intents: dict[tuple, list] = defaultdict(list)
    for key in keys:
        intents[intent(pairs, key)].append(key)
    rng = random.Random(seed)
    order = sorted(intents)
    rng.shuffle(order)
    drawn = rng.choices(order, weights=[1 / (r + 1) ** 1.1 for r in range(len(order))], k=n)
    times = sorted(start + timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n))
    return [{"query_id": f"q{i:06d}", "scope": key[0], "query": key[1], "timestamp": t.isoformat().replace("+00:00", "Z")}
            for i, (intent, t) in enumerate(zip(drawn, times)) for key in [rng.choice(intents[intent])]]


# -- measuring -----------------------------------------------------------------------------------

def prices(config, large: bool):
    cfg = config.eval
    if large:
        return type("Prices", (), {"teacher_pricing": "api", "prompt_price_per_million": LARGE_PRICES[0],
                                   "completion_price_per_million": LARGE_PRICES[1],
                                   "local_price_per_hour": cfg.local_price_per_hour})
    return cfg


def api_cost(tokens: tuple[int, int], price, backend: str, ms: float) -> float:
    if backend == "openai":
        return (tokens[0] * price.prompt_price_per_million + tokens[1] * price.completion_price_per_million) / 1e6
    return local_cost(ms, price)


def summarize(rows: list[dict], success_f1: float, price_sets: dict) -> dict:
    served = [r for r in rows if r["served"]]
    out = {"questions": len(rows), "f1_vs_gold": round(float(np.mean([r["f1"] for r in rows])), 4),
           "agreement": round(float(np.mean([r["agrees"] for r in rows])), 4),
           "served_share": round(len(served) / len(rows), 4),
           "error_among_served": round(float(np.mean([not r["agrees"] for r in served])), 4) if served else None,
           "p50_ms": round(statistics.median(r["ms"] for r in rows), 1),
           "p95_ms": round(float(np.percentile([r["ms"] for r in rows], 95)), 1)}
    successes = sum(r["f1"] >= success_f1 for r in rows)
    for name, price in price_sets.items():
        cost = sum(r["cost"][name] for r in rows)
        out[f"cost_per_success_{name}"] = round(cost / successes, 8) if successes else None
    return out


def teacher_row(answer, gold: list[str], price_sets: dict, backend: str) -> dict:
    text = "" if answer.refused else answer.answer
    return {"answer": text, "doc": cited_document(answer.citations), "refused": answer.refused,
            "f1": best_f1(text, gold) if text else 0.0, "ms": answer.latency_ms,
            "cost": {n: api_cost((answer.prompt_tokens, answer.completion_tokens), p, backend, answer.latency_ms)
                     for n, p in price_sets.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="policyqa",
                        help="policyqa (PolicyQA dev), stackfaq, covid, or the path of a SQuAD-format file")
    parser.add_argument("--tag", default="", help="added to the workspace's and the results' names, e.g. lora")
    parser.add_argument("--teacher", choices=("standin", "extractive"), default="standin")
    parser.add_argument("--queries", type=int, default=4000, help="questions in the four weeks of traffic")
    parser.add_argument("--per-group", type=int, default=100, help="held-out questions asked per group")
    parser.add_argument("--changed", type=int, default=40, help="cited segments given a new version")
    parser.add_argument("--home", type=Path, default=None, help="workspace (default bench/open-book-<teacher>)")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.epochs=2")
    parser.add_argument("--latency", type=int, default=0,
                        help="only time the promoted student on this many held-out questions, one at a time, per runtime")
    args = parser.parse_args()
    run_name = "_".join(part for part in (args.data if args.data in ("stackfaq", "covid") else "", args.teacher, args.tag)
                    if part)
    home = args.home or ROOT / "bench" / f"open-book-{run_name.replace('_', '-')}"
    home.mkdir(parents=True, exist_ok=True)
    args.data, changed_data = dataset(args.data, home)
    pairs = _pairs(args.data)
    keys_a, keys_b, unit = halves(pairs)
    server = None
    settings = {"corpus": {"allowed_sources": ["*"]}}
    if args.teacher == "standin":
        server, url = stand_in(pairs)
        settings["teacher"] = {"backend": "openai", "openai": {"base_url": url, "model": "standin", "max_new_tokens": 96}}
    for pair in args.set:
        key, value = pair.split("=", 1)
        section, name = key.split(".", 1)
        import tomllib

        settings.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    workspace = Workspace(home)
    config = workspace.config(settings)
    print(f"{args.data.name}: {len(keys_a)} (website, question) pairs on A's {unit}, {len(keys_b)} on B's; "
          f"teacher {args.teacher}" + (" (a STAND-IN for an LLM RAG: the human answer when a gold segment is "
                                        "retrieved, else a refusal)" if server else ""))

    # 1. four weeks of A's traffic, collected and trained on
    start = datetime(2026, 9, 1, tzinfo=timezone.utc)
    log = traffic(pairs, keys_a, args.queries, 28, 0, start)
    (home / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in log))
    (home / "gold.jsonl").write_text("".join(json.dumps({"query_id": q["query_id"], "gold_answers":
                                                         pairs[(q["scope"], q["query"])]["answers"]}) + "\n" for q in log))
    timings = {}
    if not workspace.traces_db.exists():
        began = time.time()
        ingest(workspace, args.data, config, fmt="squad")
        collect(workspace, config, home / "queries.jsonl")
        timings["ingest_collect_s"] = round(time.time() - began, 1)
    version = registry.current(workspace.models_dir, config.train.student_name)
    trained = registry.versions(workspace.models_dir, config.train.student_name)
    if version is None and trained:  # trained, but the gate kept it: measure it all the same, and say so
        version = trained[-1]
        registry.promote(workspace.models_dir, config.train.student_name, version,
                         reason="bench_open_book: measured though the nightly gate kept it")
        timings["gate"] = "kept by the nightly gate; promoted by the benchmark only to measure it"
    if version is None:
        began = time.time()
        result = nightly(workspace, config, gold=load_gold(home / "gold.jsonl"), force=True,
                         say=lambda stage, text: print(f"  {stage:9s} {text}", flush=True))
        timings["nightly_s"] = round(time.time() - began, 1)
        timings["stages_s"] = {k: v.get("seconds") for k, v in result.figures.items()}
        version = result.current
        if result.status != "promoted" and result.candidate:  # measure the candidate the gate kept, and say so
            version = result.candidate
            registry.promote(workspace.models_dir, config.train.student_name, version,
                             reason="bench_open_book: measured though the nightly gate kept it")
            timings["gate"] = f"kept by the nightly gate ({result.reason}); promoted by the benchmark only to measure it"
            print(f"the gate kept {version}: {result.reason}; measuring it all the same", flush=True)
        if version is None:
            raise SystemExit(f"nothing trained: {result.reason}")
        print(f"nightly {result.status} in {timings['nightly_s']:.0f} s ({timings['stages_s']})", flush=True)
    folder = workspace.models_dir / config.train.student_name / version
    manifest = json.loads((folder / "distill.json").read_text())

    # 2. the held-out week's groups
    asked = {(q["scope"], q["query"]) for q in log}
    rng = random.Random(1)
    groups = {"seen": rng.sample(sorted(asked), min(args.per_group, len(asked))),
              "new": rng.sample(sorted(set(keys_a) - asked), min(args.per_group, len(set(keys_a) - asked))),
              unit: rng.sample(keys_b, min(args.per_group, len(keys_b)))}
    price_sets = {"small": prices(config, False), "large": prices(config, True)}
    results = {"version": version, "teacher": args.teacher, "timings": timings, "training": manifest["metrics"],
               "examples": manifest["examples"], "groups": {}}
    if args.latency:
        return time_runtimes(workspace, config, folder, groups, args.latency)
    base_path = local_model(config.train.base_model, workspace.models_dir, "set train.base_model")
    base_model, base_tokenizer = load_causal_lm(base_path, config.student.runtime)
    base = Student(base_model, base_tokenizer, manifest, config.student.max_new_tokens)
    trained = Student.load(folder, runtime=config.student.runtime, max_new_tokens=config.student.max_new_tokens)

    def measure(name: str, keys: list) -> None:
        teacher = Teacher.from_workspace(workspace, config)
        backend = teacher.generator.backend
        gold = {k: pairs[k]["answers"] for k in keys}
        rows: dict[str, list[dict]] = defaultdict(list)
        answers = {k: teacher.answer(k[1], k[0]) for k in keys}
        truth = {k: teacher_row(answers[k], gold[k], price_sets, backend) for k in keys}
        for k in keys:
            rows["teacher"].append({**truth[k], "served": False, "agrees": True})
        evidence = {k: student_evidence(teacher, k[1], k[0], config.student)[0] for k in keys}
        for label, model in (("base reading evidence", base), ("open-book student alone", trained)):
            for i in range(0, len(keys), config.student.max_batch):
                batch = keys[i:i + config.student.max_batch]
                began = time.perf_counter()
                generations = model.answer_batch([(k[1], k[0], evidence[k]) for k in batch])
                each_ms = (time.perf_counter() - began) * 1000 / len(batch)
                for k, generation in zip(batch, generations):
                    read = parse_answer(generation.text, evidence[k])
                    text = "" if read.refused else read.answer
                    doc = chunk_doc_version(read.chunk_id)[0] if read.chunk_id else None
                    rows[label].append({
                        "f1": best_f1(text, gold[k]) if text else 0.0, "ms": each_ms, "served": True,
                        "agrees": agrees({"doc": doc, "answer": text, "refused": read.refused}, truth[k], config.eval.success_f1),
                        "quoted": read.quoted, "cost": {n: local_cost(each_ms, p) for n, p in price_sets.items()}})
        for label, student_route in (("replay", False), ("routed", True)):
            with Router.from_workspace(workspace, config, log=False, watch=False) as router:
                if not student_route:
                    router.gate = None
                routes = defaultdict(int)
                for k in keys:
                    routed = router.answer(k[1], k[0])
                    routes[f"{routed.route}:{routed.reason}"] += 1
                    served = routed.route in ("replay", "student")
                    text = routed.answer if served else ("" if routed.refused else routed.answer)
                    doc = cited_document(routed.citations)
                    cost = {n: local_cost(routed.router_ms + (routed.generation_ms if served else 0), p)
                            + (0 if served else api_cost((routed.prompt_tokens, routed.completion_tokens), p, backend,
                                                         routed.generation_ms))
                            for n, p in price_sets.items()}
                    if not served and routed.route == "rag":
                        text = "" if routed.refused else routed.answer
                    superseded = routed.route == "student" and any(
                        router.latest.get(d["doc_id"]) != d["version"] for d in routed.cited_doc_versions or [])
                    rows[label].append({"f1": best_f1(text, gold[k]) if text and not routed.refused else 0.0,
                                        "superseded": superseded,
                                        "ms": routed.latency_ms, "served": served, "route": routed.route,
                                        "agrees": agrees({"doc": doc, "answer": text, "refused": routed.refused},
                                                         truth[k], config.eval.success_f1) if served else True,
                                        "cost": cost})
                results.setdefault("routes", {})[f"{name}/{label}"] = dict(routes)
        figures = {label: summarize(r, config.eval.success_f1, price_sets) for label, r in rows.items()}
        figures["student_route_share"] = round(sum(r.get("route") == "student" for r in rows["routed"]) / len(keys), 4)
        figures["student_cites_superseded"] = sum(r.get("superseded", False) for r in rows["routed"])
        results["groups"][name] = figures
        print(f"\n{name}: {len(keys)} questions", flush=True)
        for label, f in figures.items():
            if isinstance(f, dict):
                print(f"  {label:24s} F1 gold {f['f1_vs_gold']:.3f}  agree {f['agreement']:.3f}  served {f['served_share']:.1%}"
                      f"  err/served {f['error_among_served'] if f['error_among_served'] is not None else '-'}"
                      f"  p50 {f['p50_ms']:.0f} ms p95 {f['p95_ms']:.0f} ms  $/success small "
                      f"{f['cost_per_success_small']} large {f['cost_per_success_large']}", flush=True)
        print(f"  routes: {results['routes'][f'{name}/routed']}", flush=True)

    for name, keys in groups.items():
        measure(name, keys)

    # 3. changed documents: a new version of segments the replayed answers cite
    cited = sorted({d["doc_id"] for c in manifest["intents"] for d in c.get("cited_doc_versions", [])})
    if changed_data:
        before, after = (segments(path) for path in (args.data, changed_data))
        changed_docs = {doc for doc, text in after.items() if before.get(doc) != text}
        pairs.update(_pairs(changed_data))  # the stand-in and the gold now answer from version 2
    else:
        changed_docs = set(random.Random(2).sample(cited, min(args.changed, len(cited))))
        data = json.loads(args.data.read_text())
        for article in data["data"]:
            for number, paragraph in enumerate(article["paragraphs"]):
                if f"{article['title']}/{number:03d}" in changed_docs:
                    paragraph["context"] += " This section was reviewed in December 2026."
        changed_data = home / "changed.json"
        changed_data.write_text(json.dumps(data))
    ingest(workspace, changed_data, config, fmt="squad")
    by_doc = [k for c in manifest["intents"] if {d["doc_id"] for d in c.get("cited_doc_versions", [])} & changed_docs
              for w in c["wordings"] for k in [(c["scope"], w)] if k in pairs]
    changed_keys = sorted(set(by_doc))[: args.per_group]
    if changed_keys:
        measure("changed", changed_keys)
    results["changed_documents"] = len(changed_docs)
    results["changed_documents_cited"] = len(changed_docs & set(cited))
    path = save_results(f"open_book_{run_name}", results)
    print(f"\nfigures in {path}")
    if server:
        server.shutdown()


def segments(path: Path) -> dict[str, str]:
    """A SQuAD file's segments by the ids `corpus` gives them: {doc_id: text}."""
    return {f"{article['title']}/{number:03d}": paragraph["context"]
            for article in json.loads(path.read_text())["data"] for number, paragraph in enumerate(article["paragraphs"])}


def time_runtimes(workspace: Workspace, config, folder: Path, groups: dict, n: int) -> None:
    """The student answering one question at a time from its evidence, per runtime: p50, p95, tokens."""
    teacher = Teacher.from_workspace(workspace, config)
    keys = [k for keys in groups.values() for k in keys[: max(1, n // len(groups))]]
    evidence = {k: student_evidence(teacher, k[1], k[0], config.student)[0] for k in keys}
    figures = {}
    for runtime in ("fp32", "bf16", "int8"):
        student = Student.load(folder, runtime=runtime, max_new_tokens=config.student.max_new_tokens)
        student.answer(keys[0][1], keys[0][0], evidence[keys[0]])  # warm-up
        times, prompt, completion = [], [], []
        for k in keys:
            began = time.perf_counter()
            generation = student.answer(k[1], k[0], evidence[k])
            times.append((time.perf_counter() - began) * 1000)
            prompt.append(generation.prompt_tokens)
            completion.append(generation.completion_tokens)
        figures[runtime] = {"questions": len(keys), "p50_ms": round(statistics.median(times), 1),
                            "p95_ms": round(float(np.percentile(times, 95)), 1),
                            "prompt_tokens": round(float(np.mean(prompt)), 1),
                            "completion_tokens": round(float(np.mean(completion)), 1)}
        print(f"student {runtime}: p50 {figures[runtime]['p50_ms']:.0f} ms, p95 {figures[runtime]['p95_ms']:.0f} ms, "
              f"{figures[runtime]['prompt_tokens']:.0f} prompt + {figures[runtime]['completion_tokens']:.1f} completion "
              f"tokens (goal p50 <= 1,500 ms in int8)", flush=True)
    save_results("open_book_latency", figures)


if __name__ == "__main__":
    main()
