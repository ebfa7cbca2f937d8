#!/usr/bin/env bash
# GPU check, ready to run on a machine with an NVIDIA GPU (issue 19), in about 5 minutes:
#
#   1. what the machine has (nvidia-smi, CPU, Python, the installed TensorFlow);
#   2. the GPU build of the *same* TensorFlow version, pip install "tensorflow[and-cuda]==X"
#      into a virtual environment that sees this Python's packages (the installed
#      tensorflow-cpu is left alone); if pip cannot install it (no index reachable, no wheel),
#      the check goes on with the installed TensorFlow and says so;
#   3. whether TensorFlow sees a GPU;
#   4. python -m xrayviewer --self-test (the real entry point; models, codecs, one analysis);
#   5. benchmarks/bench_pipeline.py --device gpu (cpu, clearly reported, when no GPU is
#      seen): warm latency, per-stage times, folder throughput, cold start, peak memory;
#   6. the same pipeline benchmark with --device cpu on this machine, for the ratio.
#
# Run from anywhere:  bash benchmarks/gpu_check.sh
# Environment: GPU_CHECK_SKIP_INSTALL=1 (use the installed TensorFlow), GPU_CHECK_IMAGES=100
# (images in the throughput part), GPU_CHECK_PIP_TIMEOUT=150 (seconds for pip), OUT (a
# folder for the logs; default: a temporary folder). Exit status 0 when every step ran
# (whether or not a GPU was seen), 1 when the self-test or a benchmark failed.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
LOGS="${OUT:-$(mktemp -d -t xrv-gpu-check-XXXXXX)}"
mkdir -p "$LOGS"
IMAGES="${GPU_CHECK_IMAGES:-100}"
PIP_TIMEOUT="${GPU_CHECK_PIP_TIMEOUT:-150}"
PY="${PYTHON:-python3}"
STATUS=0
T0=$(date +%s)

say() { printf '\n== %s (%ds)\n' "$*" "$(( $(date +%s) - T0 ))"; }

say "machine"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || nvidia-smi || true
else
  echo "nvidia-smi not found: no NVIDIA driver here (the check still runs, on the CPU)"
fi
"$PY" benchmarks/_machine.py
"$PY" --version
TF_VERSION="$("$PY" - <<'EOF'
import importlib.metadata as md
for dist in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly"):
    try:
        print(md.version(dist))
        break
    except md.PackageNotFoundError:
        pass
EOF
)"
echo "installed TensorFlow: ${TF_VERSION:-none}"

say "GPU build of TensorFlow ${TF_VERSION:-?}"
if [ -n "${GPU_CHECK_SKIP_INSTALL:-}" ]; then
  echo "skipped (GPU_CHECK_SKIP_INSTALL set): using the installed TensorFlow"
elif [ -z "$TF_VERSION" ]; then
  echo "no TensorFlow installed here: nothing to match; install xrayviewer first"
  STATUS=1
else
  VENV="$LOGS/venv"
  if "$PY" -m venv --system-site-packages "$VENV" >"$LOGS/venv.log" 2>&1 \
     && timeout "$PIP_TIMEOUT" "$VENV/bin/python" -m pip install --disable-pip-version-check -q \
          "tensorflow[and-cuda]==$TF_VERSION" >"$LOGS/pip.log" 2>&1; then
    PY="$VENV/bin/python"
    echo "installed tensorflow[and-cuda]==$TF_VERSION in $VENV (the system's tensorflow-cpu untouched)"
  else
    echo "COULD NOT INSTALL tensorflow[and-cuda]==$TF_VERSION (no package index reachable, no wheel for this"
    echo "platform, or pip timed out after ${PIP_TIMEOUT}s; last lines of $LOGS/pip.log below)."
    tail -n 5 "$LOGS/pip.log" 2>/dev/null | sed 's/^/    pip: /'
    echo "Going on with the installed TensorFlow (a CPU-only build cannot see a GPU)."
  fi
fi

say "does TensorFlow see a GPU?"
GPUS="$("$PY" - <<'EOF' 2>"$LOGS/tf_devices.log"
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
build = tf.sysconfig.get_build_info()
print(f"TensorFlow {tf.__version__}, CUDA build: {build.get('is_cuda_build')}, "
      f"CUDA {build.get('cuda_version', '-')}, cuDNN {build.get('cudnn_version', '-')}", flush=True)
print(len(gpus))
for g in gpus:
    print("  ", g.name, tf.config.experimental.get_device_details(g).get("device_name", ""))
EOF
)"
echo "$GPUS" | sed -n '1p;3,$p'
NGPU="$(echo "$GPUS" | sed -n '2p')"
if [ "${NGPU:-0}" -gt 0 ] 2>/dev/null; then
  DEVICE=gpu
  echo "TensorFlow sees $NGPU GPU(s): the benchmark runs with --device gpu"
else
  DEVICE=cpu
  echo "TensorFlow sees NO GPU: the benchmark runs with --device cpu (this is not a GPU figure)"
  grep -iE "gpu|cuda|dlopen|driver" "$LOGS/tf_devices.log" 2>/dev/null | tail -n 5 | sed 's/^/    tf: /'
fi

say "python -m xrayviewer --self-test"
if "$PY" -m xrayviewer --self-test 2>"$LOGS/selftest.err"; then
  :
else
  echo "SELF-TEST FAILED (stderr in $LOGS/selftest.err)"
  tail -n 20 "$LOGS/selftest.err"
  STATUS=1
fi

say "pipeline benchmark, --device $DEVICE"
if ! timeout 200 "$PY" benchmarks/bench_pipeline.py --device "$DEVICE" --images "$IMAGES" --runs 1 --no-naive \
     --latency-images 20 2>&1 | tee "$LOGS/bench_$DEVICE.log"; then
  echo "BENCHMARK FAILED or timed out (log: $LOGS/bench_$DEVICE.log)"
  STATUS=1
fi

if [ "$DEVICE" = gpu ]; then
  say "the same benchmark, --device cpu (same machine, for the ratio)"
  if ! timeout 120 "$PY" benchmarks/bench_pipeline.py --device cpu --images "$IMAGES" --runs 1 --no-naive \
       --latency-images 20 2>&1 | tee "$LOGS/bench_cpu.log"; then
    echo "CPU benchmark failed or timed out (log: $LOGS/bench_cpu.log)"
  fi
fi

say "done: device $DEVICE, logs in $LOGS, status $STATUS"
exit "$STATUS"
