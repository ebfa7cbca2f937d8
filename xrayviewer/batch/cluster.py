"""The batch engine on a Dask distributed cluster (``xrayviewer analyze --cluster``).

Only imported when ``--cluster`` is given (Dask is the optional ``cluster`` extra); the
in-process engine never imports it.

Division of work:

- **workers** load the bundled models once (:class:`ModelPlugin`, a worker plugin, so a
  worker the nanny restarts loads them again by itself), then analyse chunks of files
  (:func:`analyze_chunk`): read, hash, decode, one model call per chunk, and write each
  film's outputs (overlay/masks/PDF/DICOM) atomically into the shared output folder;
  they return only the rows (a few kB), never images;
- **the client** is the single writer of the journal, ``results.csv``/``results.jsonl`` and
  the summary: it commits a chunk's rows when its future finishes, in whatever order
  chunks finish. A chunk whose worker died is run again elsewhere by the scheduler;
  nothing of it reached the journal, and its outputs are atomic renames of identical
  content, so each film is recorded exactly once. A chunk that keeps killing workers
  (``KilledWorker``) is split into single files, and a file that still kills its worker
  gets an error row: the run goes on.

Resume works as in the in-process engine: the client sends, with each file, the content
hash its journal entry holds (when its outputs are still there); the worker hashes the file
and skips it when the hash matches, so the reading and hashing are spread over the cluster
too.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distributed import Client, as_completed, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import XRayViewerError
from ..inference.control import AnalysisCancelled, CancelToken
from .engine import (
    BatchAnalyzer,
    BatchItem,
    BatchOptions,
    BatchProgress,
    BatchRunner,
    BatchSummary,
    analyze_loaded,
    load_item,
    result_row,
    unanalysed_row,
)

log = logging.getLogger(__name__)

PLUGIN_NAME = "xrayviewer-models"
INSTALL_HINT = 'pip install "xrayviewer[cluster]"'
# How often a chunk may be running on a worker that dies before the scheduler gives up on it
# (KilledWorker). Set on the LocalCluster we start; an existing cluster keeps its own setting.
LOCAL_ALLOWED_FAILURES = 2
# One task per worker thread at a time (no prefetch): when a worker dies, only the chunk it
# was running counts that death, not an innocent one waiting behind it.
LOCAL_SCHEDULER_CONFIG = {"distributed.scheduler.allowed-failures": LOCAL_ALLOWED_FAILURES,
                          "distributed.scheduler.worker-saturation": 1.0}


class ClusterError(XRayViewerError):
    """The cluster cannot run this batch: unreachable, no workers, inputs or the output
    folder not readable/writable on a worker, different models on a worker."""


# ---------------------------------------------------------------- where the cluster is
@dataclass(frozen=True)
class ClusterSpec:
    kind: str  # "local", "address" or "file"
    workers: int = 0  # local only
    address: str = ""  # address: the scheduler's; file: the scheduler file

    def describe(self) -> str:
        if self.kind == "local":
            return f"a local cluster of {self.workers} worker process(es)"
        if self.kind == "file":
            return f"the scheduler in {self.address}"
        return f"the scheduler at {self.address}"


def default_local_workers() -> int:
    """One worker process per two cores (TensorFlow gets two threads in each)."""
    return max(1, (os.cpu_count() or 1) // 2)


def parse_cluster_spec(text: str) -> ClusterSpec:
    """``local``, ``local:N``, ``tcp://HOST:PORT`` (any Dask address) or ``FILE.json`` (a
    scheduler file, as ``dask scheduler --scheduler-file`` writes). Raises ValueError."""
    t = text.strip()
    if t == "local" or t.startswith("local:"):
        n = t.partition(":")[2]
        if not n:
            return ClusterSpec("local", default_local_workers())
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--cluster {text}: the number of local workers must be a positive integer")
        return ClusterSpec("local", int(n))
    if "://" in t:
        return ClusterSpec("address", address=t)
    if t.endswith(".json"):
        return ClusterSpec("file", address=t)
    raise ValueError(f"--cluster {text}: use local[:N], a scheduler address such as tcp://HOST:8786, "
                     "or a scheduler file FILE.json")


def local_worker_env(n_workers: int) -> dict[str, str]:
    """Thread settings for each local worker process, so that N TensorFlow processes share the
    cores instead of each starting one thread per core (oversubscription)."""
    per = str(max(1, (os.cpu_count() or 1) // max(1, n_workers)))
    return {"TF_NUM_INTRAOP_THREADS": per, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": per}


def connect(spec: ClusterSpec, *, timeout: float = 30.0) -> tuple[Client, Any]:
    """(client, the LocalCluster we started or None). Raises ClusterError."""
    import dask

    if spec.kind == "local":
        from distributed import LocalCluster

        try:
            with dask.config.set(LOCAL_SCHEDULER_CONFIG):
                cluster = LocalCluster(n_workers=spec.workers, threads_per_worker=1, processes=True,
                                       dashboard_address=":0", silence_logs=logging.ERROR,
                                       env=local_worker_env(spec.workers))
        except Exception as exc:
            raise ClusterError(f"could not start {spec.describe()}: {exc}") from exc
        return Client(cluster), cluster
    try:
        if spec.kind == "file":
            if not Path(spec.address).is_file():
                raise ClusterError(f"scheduler file {spec.address} not found (dask scheduler --scheduler-file "
                                   "writes it; it must be on a file system this machine sees)")
            return Client(scheduler_file=spec.address, timeout=timeout), None
        return Client(spec.address, timeout=timeout), None
    except ClusterError:
        raise
    except Exception as exc:
        raise ClusterError(f"cannot reach {spec.describe()}: {type(exc).__name__}: {exc}") from exc


# ---------------------------------------------------------------- on the workers
class ModelPlugin(WorkerPlugin):
    """Loads the bundled models once per worker process (hash-checked, as the in-process
    Analyzer does), in a thread so that the worker keeps answering the scheduler meanwhile.

    ``factory`` builds the analyzer (picklable: e.g. ``functools.partial(Analyzer, ...)``).
    ``intra_op_threads`` caps TensorFlow's threads where the environment does not."""

    name = PLUGIN_NAME
    idempotent = False

    def __init__(self, factory: Callable[[], BatchAnalyzer], intra_op_threads: int | None = None) -> None:
        self.factory = factory
        self.intra_op_threads = intra_op_threads
        self._analyzer: BatchAnalyzer | None = None
        self._lock: threading.Lock | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self.factory, "intra_op_threads": self.intra_op_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"], state["intra_op_threads"])  # type: ignore[misc]

    async def setup(self, worker: Any) -> None:
        self._lock = threading.Lock()
        if self.intra_op_threads:
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(self.intra_op_threads))
        await asyncio.get_running_loop().run_in_executor(None, self.analyzer)

    def analyzer(self) -> BatchAnalyzer:
        if self._lock is None:
            self._lock = threading.Lock()
        with self._lock:
            if self._analyzer is None:
                a = self.factory()
                load = getattr(a, "load", None)
                if callable(load):
                    load()
                self._analyzer = a
            return self._analyzer


def _plugin(worker: Any) -> ModelPlugin:
    try:
        return worker.plugins[PLUGIN_NAME]
    except KeyError:
        raise ClusterError("this worker has no xrayviewer model plugin (registered by the client)") from None


# One entry per file: (the item as the client names it, the absolute path to read, the file
# hash its journal entry holds when it is done, else None).
Entry = tuple[BatchItem, str, "str | None"]


def analyze_chunk(entries: Sequence[Entry], options: BatchOptions, models: str) -> list[dict[str, Any]]:
    """Run on a worker: one dict per entry, in order: ``{"key", "sha256", "record"}``, with
    ``record`` None when the file was already done (resume). Writes the outputs."""
    analyzer = _plugin(get_worker()).analyzer()
    if analyzer.models_key() != models:
        raise ClusterError(f"this worker has other models ({analyzer.models_key()}) than the client ({models}); "
                           "install the same xrayviewer on every worker")
    out: list[dict[str, Any]] = []
    batch = []
    slots: list[int] = []
    for item, read, done_sha in entries:
        loaded = load_item(item, (lambda sha, d=done_sha: sha == d) if done_sha else None, read_path=Path(read))
        row: dict[str, Any] = {"key": item.key, "sha256": loaded.sha256, "record": None}
        if not loaded.skip and (loaded.error is not None or loaded.refusal is not None):
            row["record"] = unanalysed_row(loaded, options)
        elif not loaded.skip:
            batch.append(loaded)
            slots.append(len(out))
        out.append(row)
    if batch:
        for i, b, res in zip(slots, batch, analyze_loaded(analyzer, batch)):
            out[i]["record"] = result_row(b, res, options)
    return out


def probe_worker(paths: Sequence[str], out_dir: str, factory: Callable[[], BatchAnalyzer]) -> dict[str, Any]:
    """Run on every worker at start: can it read the inputs and write the output folder, and
    which xrayviewer and models does it have (from the model cards: no TensorFlow)."""
    from .. import __version__

    problems = []
    for p in paths:
        try:
            if os.path.isdir(p):
                os.listdir(p)
            else:
                with open(p, "rb") as fh:
                    fh.read(1)
        except OSError as exc:
            problems.append(f"cannot read {p} ({exc.strerror or exc})")
    probe = os.path.join(out_dir, f".xrayviewer-probe-{uuid.uuid4().hex}")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        os.unlink(probe)
    except OSError as exc:
        problems.append(f"cannot write to the output folder {out_dir} ({exc.strerror or exc})")
    try:
        models = factory().models_key()
    except Exception as exc:
        models = ""
        problems.append(f"no usable models ({type(exc).__name__}: {exc})")
    return {"host": socket.gethostname(), "version": __version__, "problems": problems, "models": models}


# ---------------------------------------------------------------- on the client
class ClusterRunner(BatchRunner):
    """``BatchRunner.run`` on a Dask cluster; the client alone writes the journal and results."""

    def __init__(
        self,
        client: Client,
        factory: Callable[[], BatchAnalyzer],
        options: BatchOptions,
        *,
        intra_op_threads: int | None = None,
        progress: Callable[[BatchProgress], None] | None = None,
        on_row: Callable[[dict[str, Any]], None] | None = None,
        cancel: CancelToken | None = None,
        wait_for_workers: float = 120.0,
    ) -> None:
        # The client's analyzer only answers models_key() from the cards (no TensorFlow here).
        super().__init__(factory(), options, progress=progress, on_row=on_row, cancel=cancel)
        self.client = client
        self.factory = factory
        self.intra_op_threads = intra_op_threads
        self.wait_for_workers = wait_for_workers
        self.workers = 0

    # -- start: workers present, inputs readable, output writable, same models, models loaded
    def prepare(self, items: Sequence[BatchItem], models: str) -> None:
        try:
            self.client.wait_for_workers(1, timeout=self.wait_for_workers)
        except Exception as exc:
            raise ClusterError(f"no worker joined the cluster within {self.wait_for_workers:.0f} s "
                               f"({type(exc).__name__}); start workers with `dask worker ADDRESS`") from exc
        sample: list[str] = []
        for folder in dict.fromkeys(str(i.path.resolve().parent) for i in items):
            sample.append(folder)
            if len(sample) >= 64:
                break
        sample += [str(i.path.resolve()) for i in dict((i.path.parent, i) for i in items).values()][:64]
        from .. import __version__

        answers = self.client.run(probe_worker, sample, str(self.options.out_dir.resolve()), self.factory)
        self.workers = len(answers)
        bad = []
        for addr, a in sorted(answers.items()):
            where = f"worker {addr} (host {a['host']})"
            if a["version"] != __version__:
                bad.append(f"{where} has xrayviewer {a['version']}, this client {__version__}")
            if a["models"] and a["models"] != models:
                bad.append(f"{where} has other models ({a['models']}) than this client ({models})")
            bad += [f"{where}: {p}" for p in a["problems"]]
        if bad:
            raise ClusterError("the workers cannot run this batch: " + "; ".join(bad) +
                               ". Inputs and --out must lie on a file system every worker sees at the same path, "
                               "and every worker needs the same xrayviewer installed.")
        # The models load in each worker's setup, all workers at once; a worker that joins
        # or is restarted later loads them in its own setup.
        try:
            self.client.register_plugin(ModelPlugin(self.factory, self.intra_op_threads), name=PLUGIN_NAME)
        except XRayViewerError:
            raise
        except Exception as exc:
            raise ClusterError(f"a worker could not load the models: {type(exc).__name__}: {exc}") from exc

    def run(self, items: Sequence[BatchItem]) -> BatchSummary:
        opts = self.options
        opts.out_dir.mkdir(parents=True, exist_ok=True)
        worker_opts = replace(opts, out_dir=opts.out_dir.resolve())
        models = self.analyzer.models_key()
        summary = BatchSummary(total=len(items))
        t_start = time.perf_counter()
        self.prepare(items, models)
        state = {"done": 0}

        def report(current: str) -> None:
            if self.progress:
                self.progress(BatchProgress(state["done"], len(items), summary.skipped, summary.errors, current,
                                            time.perf_counter() - t_start))

        def entry(item: BatchItem) -> Entry:
            e = self.journal.entries.get(item.key)
            done = e["sha256"] if e and self.journal.is_done(item.key, e["sha256"], models) else None
            return (item, str(item.path.resolve()), done)

        size = max(1, opts.batch_size)
        chunks = [[entry(i) for i in items[k:k + size]] for k in range(0, len(items), size)]
        futures = {self.client.submit(analyze_chunk, c, worker_opts, models, pure=False): c for c in chunks}
        ac = as_completed(list(futures))
        # Files of failed chunks, run one at a time, so that a file that kills its worker takes
        # no other file with it.
        isolate: list[Entry] = []
        solo: list[Any] = []
        try:
            while futures or isolate:
                self.cancel.check()
                solo[:] = [g for g in solo if g in futures]
                if isolate and not solo:
                    e = isolate.pop(0)
                    g = self.client.submit(analyze_chunk, [e], worker_opts, models, pure=False)
                    futures[g] = [e]
                    solo.append(g)
                    ac.add(g)
                if not ac.has_ready():
                    time.sleep(0.05)
                    continue
                for f in ac.next_batch(block=False):
                    chunk = futures.pop(f)
                    try:
                        # Normally at hand; if the worker holding it died since, the scheduler
                        # computes it again and this waits for that.
                        rows = f.result()
                    except Exception as exc:
                        rows = None
                        if len(chunk) > 1:  # find the file at fault: each on its own
                            log.warning("a chunk of %d files failed on the cluster (%s: %s); running them one by "
                                        "one", len(chunk), type(exc).__name__, exc)
                            isolate.extend(chunk)
                        else:
                            self._commit_failure(chunk[0], exc, worker_opts, models, summary)
                            state["done"] += 1
                            report(str(chunk[0][0].path))
                    f.release()
                    if rows is None:
                        continue
                    for row in rows:
                        if row["record"] is None:
                            summary.skipped += 1
                        else:
                            self._commit(row["key"], row["sha256"], row["record"], models, summary)
                    state["done"] += len(chunk)
                    report(str(chunk[-1][0].path))
        except AnalysisCancelled:
            summary.cancelled = True
            self.client.cancel(list(futures))
        summary.seconds = time.perf_counter() - t_start
        self._write_summaries(items, summary)
        return summary

    def _commit_failure(self, e: Entry, exc: BaseException | None, options: BatchOptions, models: str,
                        summary: BatchSummary) -> None:
        from distributed import KilledWorker

        from .engine import _Loaded

        if isinstance(exc, KilledWorker):
            why = ("its worker died each time it was analysed (a crash in a decoder or a model, or out of "
                   "memory)")
        elif isinstance(exc, XRayViewerError):
            why = exc.message
        else:
            why = f"internal error on a worker: {type(exc).__name__}: {exc}"
        loaded = _Loaded(e[0], error=why)
        log.warning("%s: %s", e[0].path, why)
        self._commit(e[0].key, "", unanalysed_row(loaded, options), models, summary)
