"""Trace storage beyond one DuckDB file: curation over a DuckLake catalog vs over the DuckDB file.

Builds a workspace of synthetic teacher traces (default 1,000,000 over 10,000 real PolicyQA
wordings, 28 days of traffic), pushes them to the workspace's DuckLake (Parquet partitioned by day
and scope), then times, in this one process and in alternating order:

- the curation SQL alone (`CURATION_INPUT`) on the file and on the lake;
- the whole `curate` stage from the file and with `--lake` (reading the lake, storing decisions in
  the file; the file already holds every trace, as on a collector that pushes and curates), each
  in a fresh process, with its peak memory.

    python scripts/bench_lake.py [--traces 1000000] [--distinct 10000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import time
from concurrent.futures import ProcessPoolExecutor

from bench_curate import synthetic_workspace

from distill.learn.curate import curate
from distill.store.lake import TraceLake
from distill.store.traces import TraceStore
from distill.workspace import Workspace

from policyqa import ROOT, require_policyqa, save_results


def _size_mb(path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def _curate(home, from_lake: bool):
    """One curate run, its wall time and this process's peak RSS in MB."""
    workspace = Workspace(home)
    started = time.perf_counter()
    result = curate(workspace, workspace.config(), from_lake=from_lake)
    return result, time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--traces", type=int, default=1_000_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    require_policyqa()
    started = time.perf_counter()
    workspace, distinct = synthetic_workspace(ROOT / "bench" / f"lake-{args.traces}", args.traces, args.distinct)
    print(f"{args.traces:,} synthetic traces over {distinct:,} wordings written in {time.perf_counter() - started:.0f} s")
    config = workspace.config()
    lake = workspace.lake(config)
    with TraceStore(workspace.traces_db) as store:
        started = time.perf_counter()
        pushed = store.push_to_lake(lake)
        push_s = time.perf_counter() - started
    with TraceLake(lake) as reader:
        partitions = len(reader.partitions())
    print(f"push to the lake: {pushed:,} traces in {push_s:.1f} s ({pushed / push_s:,.0f}/s), {partitions} day/scope "
          f"partitions; DuckDB file {_size_mb(workspace.traces_db):.0f} MB, lake Parquet "
          f"{_size_mb(workspace.home / 'lake' / 'data'):.0f} MB")

    sql_s = {"file": [], "lake": []}
    for source in ("file", "lake", "lake", "file"):
        started = time.perf_counter()
        if source == "file":
            with TraceStore(workspace.traces_db) as store:
                rows = len(store.curation_input())
        else:
            with TraceLake(lake) as reader:
                rows = len(reader.curation_input())
        sql_s[source].append(time.perf_counter() - started)
        assert rows == args.traces
    curate_s, results, peak_mb = {}, {}, {}
    for source in ("file", "lake"):  # each in a fresh process, so its peak memory is its own
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[source], curate_s[source], peak_mb[source] = pool.submit(
                _curate, workspace.home, source == "lake").result()
    assert results["file"].dataset_hash == results["lake"].dataset_hash, "the lake gave a different training set"
    best = {source: min(times) for source, times in sql_s.items()}
    print(f"curation SQL, {args.traces:,} rows: file {best['file']:.1f} s, lake {best['lake']:.1f} s "
          f"(lake/file {best['lake'] / best['file']:.2f})")
    print(f"curate stage: file {curate_s['file']:.1f} s, lake {curate_s['lake']:.1f} s "
          f"(lake/file {curate_s['lake'] / curate_s['file']:.2f}); peak RSS file {peak_mb['file']:,.0f} MB, "
          f"lake {peak_mb['lake']:,.0f} MB; same training set "
          f"({results['lake'].examples} examples, {results['lake'].train:,} traces kept)")
    save_results("lake", {"traces": args.traces, "distinct": distinct, "push_s": push_s, "partitions": partitions,
                          "sql_file_s": best["file"], "sql_lake_s": best["lake"],
                          "curate_file_s": curate_s["file"], "curate_lake_s": curate_s["lake"],
                          "curate_file_peak_mb": peak_mb["file"], "curate_lake_peak_mb": peak_mb["lake"]})


if __name__ == "__main__":
    main()
