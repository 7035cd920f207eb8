"""Helpers shared by the benchmarks: the PolicyQA path, its by-website split, exact match (token
F1 lives in distill.metrics, re-exported here), and `save_results`, which keeps each benchmark's
latest figures in bench/results/<name>.json for scripts/benchmark.py's summary table.

Websites are shuffled with a fixed seed and halved: settings are chosen on the *tune* half and
figures are reported on the *report* half, so nothing is tuned on the queries it is reported on.
"""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone
from pathlib import Path

from distill.metrics import best_f1, normalize, token_f1  # noqa: F401 (re-exported for the benchmarks)
from distill.rag.traffic import _pairs

ROOT = Path(__file__).resolve().parents[1]
POLICYQA = ROOT.parent / "shared" / "datasets" / "policyqa" / "dev.json"


def require_policyqa() -> Path:
    if not POLICYQA.exists():
        raise SystemExit(f"{POLICYQA} not found: this benchmark needs ../shared/datasets/policyqa")
    return POLICYQA


def split_pairs() -> dict[str, list[dict]]:
    """{'tune': [...], 'report': [...]}, each a list of {scope, query, gold_answers, gold_doc_ids, type}."""
    by_site: dict[str, list[dict]] = {}
    for (website, question), entry in _pairs(require_policyqa()).items():
        by_site.setdefault(website, []).append({"scope": website, "query": question, "gold_answers": entry["answers"],
                                                "gold_doc_ids": set(entry["doc_ids"]), "type": entry["type"]})
    sites = sorted(by_site)
    random.Random(0).shuffle(sites)
    half = len(sites) // 2
    return {"tune": [p for s in sites[:half] for p in by_site[s]],
            "report": [p for s in sites[half:] for p in by_site[s]]}


def exact_match(prediction: str, golds: list[str]) -> float:
    return float(any(normalize(prediction) == normalize(g) for g in golds))


def save_results(name: str, figures: dict) -> Path:
    """Write a benchmark's figures, stamped with when they were measured, to bench/results/<name>.json."""
    path = ROOT / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **figures},
                               indent=2, default=str))
    return path


def load_results(name: str) -> dict | None:
    path = ROOT / "bench" / "results" / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None
