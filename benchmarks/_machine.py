"""What machine a benchmark ran on: one helper shared by every script in ``benchmarks/``.

Figures only mean something next to the CPU they were measured on: TensorFlow's oneDNN
kernels, numpy and OpenCV pick AVX-512 code at run time when the CPU has it, so the same
script is faster on an AVX-512 EPYC than on an AVX2-only one of the same core count. Every
benchmark prints :func:`describe` first, and the README's tables name that CPU.

``--max-isa avx2`` (:func:`limit_isa`, set before numpy/OpenCV/TensorFlow load, inherited by
child processes) makes the run-time dispatchers of oneDNN (``ONEDNN_MAX_CPU_ISA``), numpy
(``NPY_DISABLE_CPU_FEATURES``) and OpenCV (``OPENCV_CPU_DISABLE``) ignore AVX-512, to
approximate a CPU without it on one that has it. It is an approximation (clock, caches and
memory bandwidth stay those of this machine) and the header says it was used.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# ``python benchmarks/<script>.py`` puts benchmarks/ on the path, not the checkout: make
# ``import xrayviewer`` (and child processes) use this checkout, not another installed copy.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def child_env() -> dict[str, str]:
    """Environment for child processes: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def data_dir() -> Path:
    """The shared data, read in place (``XRAYVIEWER_DATA_DIR`` overrides)."""
    env = os.environ.get("XRAYVIEWER_DATA_DIR")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"

# Flags worth naming, in order (Linux /proc/cpuinfo spelling).
_VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                 "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16")

# Environment that hides AVX-512 from the three run-time dispatchers we use.
_ISA_LIMITS = {
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",
             "OPENCV_CPU_DISABLE": "AVX512-SKX"},
}


def _cpuinfo() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        if ":" not in line:
            if info:
                break  # first processor only
            continue
        key, value = (s.strip() for s in line.split(":", 1))
        info.setdefault(key, value)
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or platform.processor() or platform.machine() or "unknown CPU"


def vector_extensions() -> list[str]:
    """The CPU's SIMD extensions of interest (empty when /proc/cpuinfo is unavailable)."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [f for f in _VECTOR_FLAGS if f in flags]


def has_avx512() -> bool:
    return "avx512f" in vector_extensions()


def limit_isa(isa: str | None) -> None:
    """Hide newer vector extensions from oneDNN, numpy and OpenCV (call before importing them)."""
    if not isa:
        return
    for key, value in _ISA_LIMITS[isa].items():
        os.environ.setdefault(key, value)
    os.environ["XRAYVIEWER_BENCH_MAX_ISA"] = isa


def add_isa_argument(parser) -> None:  # argparse.ArgumentParser
    parser.add_argument("--max-isa", choices=sorted(_ISA_LIMITS), default=None,
                        help="hide AVX-512 from oneDNN/numpy/OpenCV to approximate a CPU without it")


def _cpu_times() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat (Linux), or None."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


def busy_fraction(seconds: float = 1.0) -> float | None:
    """Share of the CPUs other processes kept busy over ``seconds`` (this one is asleep)."""
    import time

    a = _cpu_times()
    time.sleep(seconds)
    b = _cpu_times()
    if a is None or b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1])


def load_note() -> str:
    """Whether the CPU was shared: what other processes used in the second before the run
    (the load average trails by minutes, and counts the previous benchmark too)."""
    busy = busy_fraction()
    cores = os.cpu_count() or 1
    try:
        load = f"load average {os.getloadavg()[0]:.2f}"
    except OSError:
        load = "load average unknown"
    if busy is None:
        return f"{load} on {cores} cores before the run"
    shared = "shared (another job was running)" if busy > 0.15 else "idle"
    return f"other processes kept the CPUs {busy:.0%} busy in the second before the run: {shared} ({load})"


def describe() -> list[str]:
    """Lines naming the machine: CPU model, cores, vector extensions, ISA limit, load."""
    ext = vector_extensions()
    isa = os.environ.get("XRAYVIEWER_BENCH_MAX_ISA")
    lines = [f"CPU: {cpu_model()}, {os.cpu_count() or 0} logical cores, {platform.system()} {platform.machine()}",
             "vector extensions: " + (", ".join(ext) if ext else "unknown")
             + (" (AVX-512)" if "avx512f" in ext else " (no AVX-512)" if ext else "")]
    if isa:
        lines.append(f"ISA limited to {isa.upper()} for oneDNN, numpy and OpenCV (--max-isa): "
                     "approximates a CPU without AVX-512")
    lines.append(load_note())
    return lines


def log_machine(log) -> None:  # logging.Logger
    for line in describe():
        log.info("%s", line)


def markdown_row() -> str:
    """One table row naming the CPU, for the scripts' Markdown output."""
    ext = ", ".join(vector_extensions()) or "unknown"
    isa = os.environ.get("XRAYVIEWER_BENCH_MAX_ISA")
    return (f"| CPU | {cpu_model()}, {os.cpu_count() or 0} cores; {ext}"
            f"{f'; limited to {isa.upper()}' if isa else ''} |")


if __name__ == "__main__":
    print("\n".join(describe()))
