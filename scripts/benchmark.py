"""The benchmark suite: the whole pipeline on PolicyQA traffic, then every goal next to its figure.

    python scripts/benchmark.py            # full: 4,000 queries, the default nightly (about an hour)
    python scripts/benchmark.py --quick    # 1,200 queries, 2 epochs, 80 eval questions (minutes)

Steps, in a workspace of its own (bench/benchmark or bench/benchmark-quick; a rerun resumes):
traffic (Zipf over PolicyQA-dev questions, 28 days), collection by the extractive RAG teacher,
`distill nightly` (curate, train, gate on gold, promote), `distill eval` of teacher / cache /
student / routed on the held-out recent week with gold, `distill report`, and the student's
latency next to the SmolLM2 RAG teacher's on the same questions, one at a time, in the same run.

The summary table lists every goal of the earlier issues. Figures this run did not measure come
from the latest run of their own benchmark (bench/results/*.json, written by bench_router.py and
bench_serve.py) and say when they were measured; a goal nobody measured yet says so.
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench_teacher import workspace as policyqa_workspace

from distill import registry
from distill.jobs.eval_sets import load_gold
from distill.jobs.evaluate import run_eval
from distill.jobs.nightly import nightly
from distill.jobs.report import headline, write_report
from distill.learn.open_book import student_evidence
from distill.learn.student import Student
from distill.rag.collect import collect
from distill.rag.teacher import Teacher
from distill.rag.traffic import make_traffic
from distill.workspace import Workspace

from policyqa import ROOT, load_results, require_policyqa, save_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small traffic, short training: for development")
    args = parser.parse_args()
    name = "benchmark-quick" if args.quick else "benchmark"
    home = ROOT / "bench" / name
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "index").exists():
        (home / "index").symlink_to(policyqa_workspace().index_dir.resolve())
    settings = {"train": {"epochs": 2.0}, "eval": {"max_queries": 80}} if args.quick else {}
    workspace = Workspace(home)
    config = workspace.config(settings)
    times = {}

    began = time.time()
    traffic = make_traffic(require_policyqa(), home / "traffic", n_queries=1200 if args.quick else 4000, seed=0)
    collected = collect(workspace, config, traffic.queries_file)
    times["collect"] = time.time() - began
    print(f"traffic: {traffic.queries} queries, {traffic.distinct_queries} distinct; collected {collected.answered} new "
          f"traces ({collected.skipped_existing} already stored) in {times['collect']:.0f} s")

    began = time.time()
    night = nightly(workspace, config, gold=load_gold(traffic.gold_file), force=True,
                    say=lambda stage, text: print(f"  {stage:9s} {text}"))
    times["nightly"] = time.time() - began
    if night.current is None:
        raise SystemExit(f"no student to evaluate: {night.reason}")

    run_id, figures = run_eval(workspace, config, traffic.gold_file)
    report = write_report(workspace)
    latency = student_vs_llm_teacher(workspace, config, night.current, 5 if args.quick else 20)
    measured = {"nightly": {"status": night.status, "seconds": round(times["nightly"]),
                            "evaluate": night.figures.get("evaluate", {})},
                "eval_run": run_id, "headline": headline(figures), "latency": latency,
                "router_overhead_ms": figures["router_overhead_ms"], "safety": figures["safety"],
                "keeping": figures["served_share_keeping"], "retrieval": figures["retrieval"]}
    save_results(name, measured)
    print(f"report: {report}")
    summary(measured, figures, night)


def student_vs_llm_teacher(workspace: Workspace, config, version: str, n: int) -> dict:
    """p50 latency, one question at a time, of the student reading its evidence and of RAG with SmolLM2 generating."""
    with_llm = Teacher.from_workspace(workspace, workspace.config({"teacher": {"backend": "transformers"}}))
    student = Student.load(workspace.models_dir / config.train.student_name / version,
                           runtime=config.student.runtime, max_new_tokens=config.student.max_new_tokens)
    manifest = registry.manifest(workspace.models_dir, config.train.student_name, version)
    questions = [(w, c["scope"]) for c in manifest["intents"] for w in c["wordings"][:1]][:n]
    timings = {"student": [], "teacher": []}
    for query, scope in questions:
        evidence = student_evidence(with_llm, query, scope, config.student)[0]  # what the router shows the student
        for name, call in (("student", lambda q, s: student.answer(q, s, evidence)), ("teacher", with_llm.answer)):
            began = time.perf_counter()
            call(query, scope)
            timings[name].append((time.perf_counter() - began) * 1000)
    p50 = {name: statistics.median(values) for name, values in timings.items()}
    return {"questions": len(questions), "student_p50_ms": round(p50["student"]),
            "smollm2_rag_p50_ms": round(p50["teacher"]), "ratio": round(p50["student"] / p50["teacher"], 3)}


def summary(measured: dict, figures: dict, night) -> None:
    top, evaluation = measured["headline"], measured["nightly"]["evaluate"]
    scores = next(iter(evaluation.get("scores", {}).values()), {}) if evaluation else {}
    router, serve, paraphrase = load_results("router"), load_results("serve"), load_results("paraphrase")
    wording = figures.get("by_wording", {})

    def earlier(result: dict | None, text) -> str:
        return "not measured yet" if result is None else f"{text(result)} (measured {result['measured_at']})"

    rows = [
        ("#4 student vs teacher F1, covered held-out", ">= 0.80", _f(scores.get("f1_vs_teacher"))),
        ("#4 student vs gold, teacher vs gold", "within 0.02",
         f"{_f(scores.get('f1_vs_gold'))} vs {_f(scores.get('teacher_f1_vs_gold'))}"),
        ("#4 nightly wall time", "<= 1800 s", f"{measured['nightly']['seconds']} s ({night.status})"),
        ("#4 student latency / SmolLM2 RAG latency (p50, same run)", "<= 0.33",
         f"{measured['latency']['ratio']} ({measured['latency']['student_p50_ms']} vs "
         f"{measured['latency']['smollm2_rag_p50_ms']} ms)"),
        ("#5 router overhead p50 (cold, one MiniLM forward)", "<= 10 ms",
         earlier(router, lambda r: f"{r['overhead_cold_p50_ms']} ms, p95 {r['overhead_cold_p95_ms']} ms")),
        ("#5 router overhead p50 on this eval (vectors cached by the teacher)", "-",
         f"{measured['router_overhead_ms']['p50']} ms, p95 {measured['router_overhead_ms']['p95']} ms"),
        ("#5 changed COVID questions served after the update", "0",
         earlier(router, lambda r: f"{r['changed_eligible_after']} of {r['changed_wordings']} wordings")),
        ("#5 unchanged covered questions still served", "still served",
         earlier(router, lambda r: f"{r['unchanged_eligible_after']} of {r['unchanged_wordings']} "
                                   f"(before the update {r['unchanged_eligible_before']})")),
        ("#5 high-risk / off-topic served by the student", "0 / 0",
         earlier(router, lambda r: f"{r['high_risk_served']} of {r['high_risk']} / {r['off_topic_served']} of {r['off_topic']}")),
        ("#5 load: 32 clients, 60 s", "0 errors, all traced",
         earlier(serve, lambda r: f"{r['errors']} errors, {r['answered_per_s']}/s, p50 {r['p50_ms']} ms, "
                                  f"{r['traces_logged']} of {r['answered']} traced")),
        ("#6 routed F1 vs gold kept, share of teacher-only", ">= 98 %", _pct(top["quality_kept"])),
        ("#6 traffic served by the student", ">= 60 %", _pct(top["served_share"])),
        ("#6 cost per successful answer vs teacher-only", "<= 40 %", _pct(top["cost_ratio"])),
        ("#6 of those served, asked in a wording seen in training", "-",
         f"{figures['served_wording_seen_in_training']} of {round(top['served_share'] * figures['traffic'])}"),
        ("#6 risky questions (curation's flags) served by the student", "0",
         f"{measured['safety']['served_by_student']} of {measured['safety']['flagged_by_curation']}"),
        ("#6 share keeping 95 % / 99 % of teacher quality (curve)", "-",
         f"{_pct(measured['keeping']['95%'])} / {_pct(measured['keeping']['99%'])}"),
        ("#14 PolicyQA held-out: routed error rate among served, seen / novel wordings",
         f"<= {figures['max_error_rate']:.0%}",
         " / ".join(f"{_pct(wording.get(k, {}).get('routed', {}).get('error_rate'))} of "
                    f"{_pct(wording.get(k, {}).get('routed', {}).get('served_share'))} served" for k in ("seen", "novel"))),
        ("#14 StackFAQ novel wordings (report half): routed served, error", ">= 50 %, <= 2 %",
         earlier(paraphrase, lambda r: f"{_pct(r['table']['routed']['novel/report']['served'])}, "
                                       f"{_pct(r['table']['routed']['novel/report']['error_rate'])}")),
        ("#14 StackFAQ novel wordings (report half): static cache served, error", "routed >= 2x",
         earlier(paraphrase, lambda r: f"{_pct(r['table']['cache']['novel/report']['served'])}, "
                                       f"{_pct(r['table']['cache']['novel/report']['error_rate'])}")),
        ("#14 StackFAQ seen wordings (report half): routed served", ">= 90 %",
         earlier(paraphrase, lambda r: _pct(r['table']['routed']['seen/report']['served']))),
        ("#14 StackFAQ out-of-scope questions served by the student", "0",
         earlier(paraphrase, lambda r: f"{r['table']['routed']['out_of_scope/out_of_scope']['served_traffic']} of "
                                       f"{r['table']['routed']['out_of_scope/out_of_scope']['traffic']}")),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'goal':{width}s}  {'target':>20s}  measured")
    for goal, target, value in rows:
        print(f"{goal:{width}s}  {target:>20s}  {value}")
    print(f"\n{figures['queries']} distinct held-out questions ({figures['traffic']} asked, {figures['gold_queries']} "
          f"with gold); routed reasons {figures['systems']['routed']['reasons']}")


def _f(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":
    main()
