"""Would another saved form of the four bundled models start faster than the ``.keras`` files?

The ``.keras`` files and their card sha256 stay the source of truth; a derived form would
only be worth a cache (kept next to the user's data, verified against the ``.keras`` hash)
if it loads measurably faster. Each form is exported here from the verified ``.keras``
models into a temporary folder, then timed in fresh processes (``--runs`` each, medians):

* ``keras``: ``keras.saving.load_model`` (what the app loads), eager calls;
* ``keras+graph``: the same, called through ``modelstore.GraphInference`` (what the app
  runs: one ``tf.function`` per model, traced on the first call);
* ``savedmodel``: ``model.export`` -> ``tf.saved_model.load`` (graphs already traced);
* ``weights-h5``: the architecture from the ``.keras`` file's config + ``.weights.h5``.

Per form: TensorFlow import, loading the four models, the first call of each on a batch of
8 (tracing included where there is one), and a warm call of each.

Run: python benchmarks/bench_model_formats.py [--runs 3] [--max-isa avx2]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import _machine  # puts this checkout on sys.path (xrayviewer is imported later, in main)

log = logging.getLogger("bench_model_formats")

FORMS = ("keras", "keras+graph", "savedmodel", "weights-h5")
NAMES = ("xray_gate", "lung_unet", "xray_classifier", "opacity_generator")

CHILD = r'''
import json, os, sys, time, zipfile
form, folder = sys.argv[1], sys.argv[2]
t = time.perf_counter()
import numpy as np
import tensorflow as tf
import keras
t_import = time.perf_counter() - t
from xrayviewer.modellayer import modelstore
cards = {n: modelstore.read_card(n) for n in NAMES}
keep, fns = [], {}
t = time.perf_counter()
for n, card in cards.items():
    if form in ("keras", "keras+graph"):
        m = keras.saving.load_model(card.weights_path, compile=False)
        fns[n] = modelstore.GraphInference(m) if form == "keras+graph" else (lambda x, m=m: m(x, training=False))
    elif form == "savedmodel":
        m = tf.saved_model.load(os.path.join(folder, n + "_savedmodel"))
        fns[n] = m.serve
    else:
        with zipfile.ZipFile(card.weights_path) as z:
            m = keras.models.model_from_json(z.read("config.json").decode())
        m.load_weights(os.path.join(folder, n + ".weights.h5"))
        fns[n] = lambda x, m=m: m(x, training=False)
    keep.append(m)
t_load = time.perf_counter() - t
xs = {n: tf.constant(np.random.default_rng(0).random((8, c.input_size, c.input_size, 1), np.float32))
      for n, c in cards.items()}
t = time.perf_counter()
for n in cards:
    np.asarray(fns[n](xs[n]))
t_first = time.perf_counter() - t
warm = []
for _ in range(5):
    t = time.perf_counter()
    for n in cards:
        np.asarray(fns[n](xs[n]))
    warm.append(time.perf_counter() - t)
print(json.dumps({"import": t_import, "load": t_load, "first": t_first, "warm": float(np.median(warm))}))
'''


def export_forms(folder: Path) -> None:
    """SavedModel and weights-only files of the verified .keras models (in a child process)."""
    code = ("import sys, os; from xrayviewer.modellayer import modelstore\n"
            f"for n in {NAMES!r}:\n"
            "    m, card = modelstore.load_model(n)\n"
            "    m.export(os.path.join(sys.argv[1], n + '_savedmodel'), verbose=False)\n"
            "    m.save_weights(os.path.join(sys.argv[1], n + '.weights.h5'))\n")
    subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env=_machine.child_env(),
                   capture_output=True)


def run_form(form: str, folder: Path) -> dict[str, float]:
    code = f"NAMES = {NAMES!r}\n" + CHILD
    out = subprocess.run([sys.executable, "-c", code, form, str(folder)], check=True, env=_machine.child_env(),
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    _machine.add_isa_argument(parser)
    args = parser.parse_args()
    _machine.limit_isa(args.max_isa)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    _machine.log_machine(log)
    tmp = Path(tempfile.mkdtemp(prefix="xrv-formats-"))
    try:
        export_forms(tmp)
        size = {f: sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file() and (
            (f == "savedmodel" and "_savedmodel" in str(p)) or (f == "weights-h5" and p.suffix == ".h5")))
            for f in ("savedmodel", "weights-h5")}
        results: dict[str, list[dict[str, float]]] = {f: [] for f in FORMS}
        for _ in range(args.runs):  # interleaved: the machine's drift hits every form alike
            for form in FORMS:
                results[form].append(run_form(form, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def med(form: str, key: str) -> float:
        return statistics.median(r[key] for r in results[form])

    log.info("")
    log.info("| form (median of %d fresh processes) | TF import | load 4 models | first call of each, batch 8 "
             "| load + first call | warm call of each |", args.runs)
    log.info("|---|---|---|---|---|---|")
    for form in FORMS:
        log.info("| %s | %.2f s | %.2f s | %.2f s | %.2f s | %.0f ms |", form, med(form, "import"), med(form, "load"),
                 med(form, "first"), med(form, "load") + med(form, "first"), 1000 * med(form, "warm"))
    base = med("keras+graph", "load") + med("keras+graph", "first")
    for form in ("savedmodel", "weights-h5"):
        other = med(form, "load") + med(form, "first")
        verdict = "faster" if other < 0.9 * base else "not faster"
        log.info("%s: load + first call %.2f s vs %.2f s for the .keras files as the app runs them: %s "
                 "(%.1f MB on disk)", form, other, base, verdict, size[form] / 2**20)
    log.info("%s", _machine.markdown_row())


if __name__ == "__main__":
    main()
