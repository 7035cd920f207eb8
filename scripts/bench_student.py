"""Student vs teacher on PolicyQA traffic: run `distill nightly` (curate, train the default student,
gate against gold) on the collected traffic, then compare the candidate with the teacher on the
held-out recent window, on the intents the student covers.

    python scripts/bench_student.py [--max-eval 120] [--teacher-latency 20] [--set train.epochs=8]
    python scripts/bench_student.py --version v0003     # evaluate a registered version, no training

Needs `scripts/bench_curate.py` to have collected the traffic first. Reports the nightly wall time
by stage and peak memory; token F1 of student answers against the teacher's and
against gold, the teacher's own F1 against gold on the same queries, and the ceiling a replay of the
cluster's trained answer would reach (what a semantic cache scores); latency p50/p95 of the student
in each runtime next to the SmolLM2 RAG teacher (retrieval included), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
import tomllib

import numpy as np

from distill.config import Workspace
from distill.evaluate import covered_eval_queries, load_gold
from distill.nightly import nightly
from distill.student import Student
from distill.teacher import Teacher
from policyqa import ROOT, best_f1, token_f1


def overrides(pairs: list[str]) -> dict:
    result: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        section, name = key.split(".", 1)
        result.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-eval", type=int, default=120, help="distinct covered eval queries to answer")
    parser.add_argument("--teacher-latency", type=int, default=20, help="queries timed one at a time per system")
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. train.epochs=8")
    parser.add_argument("--version", help="evaluate this registered version instead of training a new one")
    args = parser.parse_args()
    workspace = Workspace(ROOT / "bench" / "curate-policyqa")
    if not workspace.traces_db.exists():
        raise SystemExit("run scripts/bench_curate.py first: it collects and curates the PolicyQA traffic")
    gold = {g["query_id"]: g for g in map(json.loads, (ROOT / "bench" / "traffic" / "gold.jsonl").read_text().splitlines())}
    config = workspace.config(overrides(args.set))
    if args.version:
        path = workspace.models_dir / config.train.student_name / args.version
    else:
        started = time.time()
        result = nightly(workspace, config, gold=load_gold(ROOT / "bench" / "traffic" / "gold.jsonl"), force=True,
                         say=lambda stage, text: print(f"  {stage:9s} {text}"))
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        stages = ", ".join(f"{name} {f['seconds']:.0f} s" for name, f in result.figures.items())
        print(f"nightly {result.status} in {time.time() - started:.0f} s wall ({stages}; goal <= 30 min), "
              f"peak RSS {peak_mb:.0f} MB; {config.train.method}, lr {config.train.learning_rate}, "
              f"{config.train.epochs} epochs")
        version = result.candidate or result.current
        if version is None:
            raise SystemExit(f"nothing to evaluate: {result.reason}")
        path = workspace.models_dir / config.train.student_name / version
    manifest = json.loads((path / "distill.json").read_text())
    queries = covered_eval_queries(workspace, manifest)[: args.max_eval]
    student = Student.load(path, runtime="fp32")
    answers = []
    for start in range(0, len(queries), 16):
        answers += [g.text for g in student.answer_batch([(q["query"], q["scope"]) for q in queries[start:start + 16]])]
    golds = [gold[q["query_id"]]["gold_answers"] for q in queries]
    print(f"held-out window, covered intents: {len(queries)} distinct queries answered ({path.name})")
    print(f"  student vs teacher token F1 {np.mean([token_f1(a, q['answer']) for a, q in zip(answers, queries)]):.3f} "
          f"(goal >= 0.80); replaying the cluster's trained answer would score "
          f"{np.mean([token_f1(q['cluster_answer'], q['answer']) for q in queries]):.3f}")
    print(f"  student vs gold {np.mean([best_f1(a, g) for a, g in zip(answers, golds)]):.3f}, "
          f"teacher (extractive) vs gold {np.mean([best_f1(q['answer'], g) for q, g in zip(queries, golds)]):.3f} "
          f"(goal: within 0.02)")

    timed = queries[: args.teacher_latency]
    smol = Teacher.from_workspace(workspace, workspace.config({"teacher": {"backend": "transformers"}}))
    latencies = {"SmolLM2 RAG teacher": [time_one(lambda q: smol.answer(q["query"], q["scope"]), q) for q in timed]}
    for runtime in ("fp32", "bf16", "int8"):
        runner = Student.load(path, runtime=runtime)
        texts = []
        latencies[f"student {runtime}"] = [time_one(lambda q: texts.append(runner.answer(q["query"], q["scope"]).text), q)
                                           for q in timed]
        agree = np.mean([token_f1(t, a) for t, a in zip(texts, answers)])
        print(f"  student {runtime}: agreement with fp32 answers {agree:.3f}")
    teacher_p50 = statistics.median(latencies["SmolLM2 RAG teacher"])
    print("  latency, one query at a time (same run):")
    for name, values in latencies.items():
        p50 = statistics.median(values)
        print(f"    {name:20s} p50 {p50:6.0f} ms  p95 {np.percentile(values, 95):6.0f} ms  "
              f"ratio to teacher {p50 / teacher_p50:.2f} (goal <= 0.33)")


def time_one(call, query) -> float:
    begun = time.perf_counter()
    call(query)
    return (time.perf_counter() - begun) * 1000


if __name__ == "__main__":
    main()
