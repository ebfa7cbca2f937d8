"""The benchmark scripts stay runnable (issue 19): they name the machine, the GPU check is
valid shell, and the pipeline benchmark's ``--device`` reaches the analyzer. No timings are
checked: benchmarks report, tests check."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH.parent), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_gpu_check_is_valid_bash() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    script = BENCH / "gpu_check.sh"
    subprocess.run([bash, "-n", str(script)], check=True)
    text = script.read_text()
    for step in ("tensorflow[and-cuda]==", "--self-test", "bench_pipeline.py --device", "list_physical_devices"):
        assert step in text


def test_machine_description_names_cpu_and_vector_extensions() -> None:
    out = subprocess.run([sys.executable, str(BENCH / "_machine.py")], capture_output=True, text=True, check=True,
                         env=_env()).stdout
    assert out.startswith("CPU: ") and "vector extensions: " in out and "load average" in out


def test_isa_limit_reaches_child_processes() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import _machine; _machine.limit_isa('avx2');"
            "import os, subprocess; print(subprocess.run([sys.executable, '-c', "
            "'import os; print(os.environ.get(\"ONEDNN_MAX_CPU_ISA\"), os.environ.get(\"XRAYVIEWER_BENCH_MAX_ISA\"))'],"
            " capture_output=True, text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, check=True,
                         env={k: v for k, v in _env().items() if k != "ONEDNN_MAX_CPU_ISA"}).stdout
    assert out.strip() == "AVX2 avx2"


@pytest.mark.parametrize("script", ["bench_pipeline.py", "bench_large_films.py", "bench_model_formats.py"])
def test_benchmarks_parse_their_options(script: str) -> None:
    out = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True, check=True,
                         env=_env()).stdout
    assert "--max-isa" in out
    if script == "bench_pipeline.py":
        assert "--device" in out


def test_device_cpu_reaches_the_analyzer(data_dir: Path) -> None:
    """What ``bench_pipeline.py --device cpu`` (and gpu_check.sh without a GPU) runs."""
    from xrayviewer.imaging import load_image
    from xrayviewer.inference.analyzer import Analyzer
    from xrayviewer.inference.device import DeviceError

    a = Analyzer(device="cpu")
    png = min((data_dir / "covid-qu-ex" / "Val" / "Normal" / "images").glob("*.png"))
    res = a.analyze(load_image(png))
    assert a.device == "cpu" and res.gate.code
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        with pytest.raises(DeviceError):
            Analyzer(device="gpu").load()
