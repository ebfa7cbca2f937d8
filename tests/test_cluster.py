"""``analyze --cluster``: the batch engine on a Dask LocalCluster (2 worker processes, 1
thread each) over real films: the same rows as in-process, faults (a worker killed mid-run,
a file that kills its worker, the client killed and re-run), checks at start, no Dask
without --cluster.

The fault tests use a slow stand-in analyzer (no TensorFlow) so that a kill lands mid-run;
the rows test runs the bundled models on both engines.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the cluster extra (dask distributed) is not installed")

from xrayviewer.batch import BatchOptions, BatchRunner, discover  # noqa: E402
from xrayviewer.batch.cluster import ClusterError, ClusterRunner, ClusterSpec, connect, parse_cluster_spec  # noqa: E402
from xrayviewer.batch.engine import JOURNAL_NAME  # noqa: E402
from xrayviewer.inference.control import CancelToken  # noqa: E402
from xrayviewer.inference.result import CSV_COLUMNS, AnalysisResult, GateVerdict, ModelInfo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class SlowAnalyzer:
    """Stand-in for the Analyzer on workers: ``delay`` s per image; a film whose name has
    ``crash`` ends its process at once, as a segfaulting decoder would."""

    def __init__(self, delay: float = 0.3) -> None:
        self.delay = delay

    def models_key(self) -> str:
        return "slow@1"

    def analyze_batch(self, images, *, cancel=None):
        out = []
        for img in images:
            if "crash" in img.source:
                os._exit(70)
            time.sleep(self.delay)
            out.append(AnalysisResult(img.source, img.file_sha256, img.pixel_sha256(), img.shape,
                                      GateVerdict(False, "not_xray", "stand-in"),
                                      (ModelInfo("slow", "1", "0" * 64),), {"gate": self.delay}))
        return out


def _films(data_dir: Path, n: int) -> list[Path]:
    root = data_dir / "covid-qu-ex" / "Val"
    per = (n + 1) // 2
    return (sorted((root / "COVID-19" / "images").glob("*.png"))[:per]
            + sorted((root / "Normal" / "images").glob("*.png"))[:n - per])


def _folder(tmp_path: Path, films: list[Path]) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for p in films:
        shutil.copy(p, src / f"{p.parent.parent.name}_{p.name}")
    return src


def _journal_keys(out: Path) -> Counter:
    return Counter(json.loads(line)["key"] for line in (out / JOURNAL_NAME).read_text().splitlines() if line.strip())


@pytest.fixture(scope="module")
def cluster():
    client, local = connect(ClusterSpec("local", 2))
    try:
        yield client
    finally:
        client.close()
        local.close()


def test_cluster_spec_parsing() -> None:
    assert parse_cluster_spec("local:3") == ClusterSpec("local", 3)
    assert parse_cluster_spec("local").workers >= 1
    assert parse_cluster_spec("tcp://10.0.0.1:8786") == ClusterSpec("address", address="tcp://10.0.0.1:8786")
    assert parse_cluster_spec("/shared/sched.json") == ClusterSpec("file", address="/shared/sched.json")
    for bad in ("local:0", "local:x", "somewhere"):
        with pytest.raises(ValueError):
            parse_cluster_spec(bad)


@pytest.mark.slow
def test_same_rows_as_in_process_with_the_bundled_models(cluster, tmp_path: Path, data_dir: Path,
                                                          dicom_dir: Path) -> None:
    """Every column but the timings agrees; outputs carry the same (de-identified) names."""
    from xrayviewer.inference.analyzer import Analyzer

    src = _folder(tmp_path, _films(data_dir, 8))
    shutil.copy(dicom_dir / "broken" / "RG2_JPLY.dcm", src / "broken.dcm")  # the decoder fails: error row
    shutil.copy(dicom_dir / "non_cxr" / "CT_small.dcm", src / "ct.dcm")  # refused
    shutil.copy(dicom_dir / "RG1_J2KI.dcm", src / "RG1_J2KI.dcm")  # the patient's name: hashed output name
    items = discover([src]).items
    fmt = ("csv", "json", "png")
    local = BatchRunner(Analyzer(device="cpu"), BatchOptions(tmp_path / "a", fmt, batch_size=4)).run(items)
    remote = ClusterRunner(cluster, functools.partial(Analyzer, device="cpu"),
                           BatchOptions(tmp_path / "b", fmt, batch_size=4)).run(items)
    assert (remote.ok, remote.refused, remote.errors) == (local.ok, local.refused, local.errors)
    assert remote.errors == 1 and remote.refused >= 1
    a = list(csv.DictReader(open(tmp_path / "a" / "results.csv")))
    b = list(csv.DictReader(open(tmp_path / "b" / "results.csv")))
    assert len(a) == len(b) == len(items)
    for ra, rb in zip(a, b):
        for col in CSV_COLUMNS:
            if col == "seconds":
                continue
            try:
                assert float(ra[col]) == pytest.approx(float(rb[col]), abs=2e-3), (col, ra["path"])
            except ValueError:
                assert ra[col] == rb[col], (col, ra["path"])
    assert any(r["path"].startswith("image-") for r in b)  # de-identified, as in-process
    outs = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.png"))
    assert outs == sorted(p.relative_to(tmp_path / "b").as_posix() for p in (tmp_path / "b").rglob("*.png"))
    assert set(_journal_keys(tmp_path / "b").values()) == {1}
    # A re-run adds nothing (the error is retried, as in-process).
    again = ClusterRunner(cluster, functools.partial(Analyzer, device="cpu"),
                          BatchOptions(tmp_path / "b", fmt, batch_size=4)).run(items)
    assert again.skipped == len(items) - 1
    assert len(list(csv.DictReader(open(tmp_path / "b" / "results.csv")))) == len(items)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(cluster, tmp_path: Path, data_dir: Path) -> None:
    items = discover([_folder(tmp_path, _films(data_dir, 12))]).items
    pids = list(cluster.run(os.getpid).values())
    killed: list[int] = []

    def kill_one(p) -> None:
        if p.done >= 2 and not killed:
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])

    out = tmp_path / "out"
    summary = ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.4), BatchOptions(out, ("csv",), batch_size=2),
                            progress=kill_one).run(items)
    assert killed  # mid-run: later chunks were still to come
    assert summary.errors == 0 and summary.refused == len(items)
    assert _journal_keys(out) == Counter({i.key: 1 for i in items})
    assert len(list(csv.DictReader(open(out / "results.csv")))) == len(items)
    cluster.wait_for_workers(2, timeout=60)  # the nanny restarted it


def test_a_file_that_kills_its_worker_gets_an_error_row_and_the_run_goes_on(cluster, tmp_path: Path,
                                                                             data_dir: Path) -> None:
    films = _films(data_dir, 5)
    src = _folder(tmp_path, films)
    shutil.copy(films[0], src / "crash-decoder.png")
    items = discover([src]).items
    out = tmp_path / "out"
    summary = ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.05),
                            BatchOptions(out, ("csv",), batch_size=3)).run(items)
    rows = {Path(r["path"]).name: r for r in csv.DictReader(open(out / "results.csv"))}
    assert rows["crash-decoder.png"]["status"] == "error"
    assert "worker died" in rows["crash-decoder.png"]["reason"]
    assert summary.errors == 1 and summary.refused == len(items) - 1
    assert _journal_keys(out) == Counter({i.key: 1 for i in items})
    cluster.wait_for_workers(2, timeout=60)


def test_cancel_then_resume(cluster, tmp_path: Path, data_dir: Path) -> None:
    items = discover([_folder(tmp_path, _films(data_dir, 8))]).items
    token = CancelToken()
    out = tmp_path / "out"
    opts = BatchOptions(out, ("csv",), batch_size=1)
    first = ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.3), opts, cancel=token,
                          progress=lambda p: token.cancel() if p.done >= 2 else None).run(items)
    assert first.cancelled
    n = len(_journal_keys(out))
    assert 2 <= n < len(items)
    second = ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.01), opts).run(items)
    assert not second.cancelled and second.skipped == n
    assert _journal_keys(out) == Counter({i.key: 1 for i in items})


_CLIENT = """
import functools, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from test_cluster import SlowAnalyzer
from xrayviewer.batch import BatchOptions, discover
from xrayviewer.batch.cluster import ClusterRunner, ClusterSpec, connect
client, local = connect(ClusterSpec("local", 2))
items = discover([{src!r}]).items
ClusterRunner(client, functools.partial(SlowAnalyzer, 0.5), BatchOptions(Path({out!r}), ("csv",), batch_size=1)).run(items)
"""


def test_client_killed_then_rerun_resumes(cluster, tmp_path: Path, data_dir: Path) -> None:
    src = _folder(tmp_path, _films(data_dir, 10))
    out = tmp_path / "out"
    code = _CLIENT.format(tests=str(REPO / "tests"), src=str(src), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / JOURNAL_NAME).is_file() and len(_journal_keys(out)) >= 3:
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the client machine "dies": client, scheduler and its workers
        proc.wait(timeout=30)
    done_before = len(_journal_keys(out))
    assert 3 <= done_before < 10
    items = discover([src]).items
    summary = ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.01), BatchOptions(out, ("csv",))).run(items)
    assert summary.skipped == done_before
    assert _journal_keys(out) == Counter({i.key: 1 for i in items})
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 10


def test_inputs_the_workers_cannot_read_are_reported_at_start(cluster, tmp_path: Path, data_dir: Path) -> None:
    src = _folder(tmp_path, _films(data_dir, 2))
    items = discover([src]).items
    shutil.rmtree(src)  # e.g. a folder on a disk only the client mounts
    with pytest.raises(ClusterError) as err:
        ClusterRunner(cluster, functools.partial(SlowAnalyzer, 0.01), BatchOptions(tmp_path / "out")).run(items)
    msg = err.value.message
    assert f"cannot read {src}" in msg and "every worker sees" in msg
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


def test_without_dask_cluster_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     data_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import xrayviewer.batch
    from xrayviewer.cli import main

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    monkeypatch.delitem(sys.modules, "xrayviewer.batch.cluster", raising=False)
    monkeypatch.delattr(xrayviewer.batch, "cluster", raising=False)
    film = _films(data_dir, 1)[0]
    rc = main(["analyze", str(film), "--out", str(tmp_path / "out"), "--cluster", "local:2"])
    assert rc == 2
    assert 'pip install "xrayviewer[cluster]"' in capfd.readouterr().err
    assert not (tmp_path / "out").exists()


def test_bad_cluster_address_is_a_clear_usage_error(tmp_path: Path, data_dir: Path,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    from xrayviewer.cli import main

    film = _films(data_dir, 1)[0]
    rc = main(["analyze", str(film), "--out", str(tmp_path / "out"), "--cluster", str(tmp_path / "nope.json")])
    assert rc == 2 and "scheduler file" in capfd.readouterr().err


def test_analyze_without_cluster_never_imports_dask(tmp_path: Path) -> None:
    code = ("import sys; from xrayviewer.cli import main;"
            f"rc = main(['analyze', {str(tmp_path / 'missing.png')!r}, '--out', {str(tmp_path / 'o')!r}]);"
            "bad=[m for m in ('dask', 'distributed') if m in sys.modules]; print(rc, bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
