"""Throughput of ``analyze`` in-process vs on a Dask LocalCluster, the scheduler's overhead
per task, and what that means for the chunk size and for an N-worker cluster.

    nice -n 19 python3 benchmarks/bench_cluster.py [--films 40] [--workers 2] [--batch-size 8]

Both engines run the bundled models on the CPU over the same real films (COVID-QU-Ex Val,
256x256 PNG) with PNG outputs, each into a fresh output folder; model loading is included
in both (the cluster loads them in every worker, in parallel). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _noop(x: int) -> int:
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--films", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from xrayviewer.batch import BatchOptions, BatchRunner, discover
    from xrayviewer.batch.cluster import ClusterRunner, ClusterSpec, connect
    from xrayviewer.inference.analyzer import Analyzer

    root = args.data / "covid-qu-ex" / "Val"
    films = sorted((root / "COVID-19" / "images").glob("*.png"))[: args.films // 2]
    films += sorted((root / "Normal" / "images").glob("*.png"))[: args.films - len(films)]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    src = tmp / "in"
    src.mkdir()
    for p in films:
        shutil.copy(p, src / f"{p.parent.parent.name}_{p.name}")
    items = discover([src]).items
    fmt = ("csv", "json", "png")
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    out: dict = {"films": len(items), "cpu": cpu, "cores": os.cpu_count(), "batch_size": args.batch_size}

    analyzer = Analyzer(device="cpu")
    t = time.perf_counter()
    BatchRunner(analyzer, BatchOptions(tmp / "a", fmt, batch_size=args.batch_size)).run(items)
    out["in_process_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()  # warm: models loaded
    BatchRunner(analyzer, BatchOptions(tmp / "a2", fmt, batch_size=args.batch_size)).run(items)
    out["in_process_warm_s"] = round(time.perf_counter() - t, 2)

    t = time.perf_counter()
    client, local = connect(ClusterSpec("local", args.workers))
    out["cluster_start_s"] = round(time.perf_counter() - t, 2)
    try:
        t = time.perf_counter()
        ClusterRunner(client, functools.partial(Analyzer, device="cpu"),
                      BatchOptions(tmp / "b", fmt, batch_size=args.batch_size)).run(items)
        out["cluster_s"] = round(time.perf_counter() - t, 2)
        # Warm: the models are loaded in the workers; a second folder of the same films.
        t = time.perf_counter()
        ClusterRunner(client, functools.partial(Analyzer, device="cpu"),
                      BatchOptions(tmp / "c", fmt, batch_size=args.batch_size)).run(items)
        out["cluster_warm_s"] = round(time.perf_counter() - t, 2)
        # Scheduler overhead per task: round trip of 200 no-op tasks, submitted at once.
        n = 200
        t = time.perf_counter()
        client.gather([client.submit(_noop, i, pure=False) for i in range(n)])
        out["overhead_per_task_ms"] = round((time.perf_counter() - t) / n * 1000, 2)
    finally:
        client.close()
        local.close()
    per_film = out["cluster_warm_s"] / len(items)
    out["films_per_s_in_process"] = round(len(items) / out["in_process_s"], 2)
    out["films_per_s_in_process_warm"] = round(len(items) / out["in_process_warm_s"], 2)
    out["films_per_s_cluster"] = round(len(items) / out["cluster_s"], 2)
    out["films_per_s_cluster_warm"] = round(len(items) / out["cluster_warm_s"], 2)
    out["overhead_share_at_chunk"] = round(out["overhead_per_task_ms"] / 1000 / (per_film * args.batch_size), 4)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
