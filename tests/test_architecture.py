"""Rooms with one-way doors, enforced by walking every module's AST.

Rules (README, "Architecture"):
- only ``xrayviewer/gui`` imports tkinter (or tkinterdnd2), and not even all of it: the
  viewer's session and its background-task mechanism are Tk-free (tested without a display);
- nothing outside ``xrayviewer/training`` imports ``xrayviewer.training``;
- nothing outside ``xrayviewer/gui`` imports ``xrayviewer.gui``, except the launcher (the
  composition root behind the ``xrayviewer`` command);
- heavy libraries (TensorFlow/Keras) are never imported at module level by app code, so
  the window and the CLI start before TensorFlow has loaded;
- Dask (the optional ``cluster`` extra) is imported by ``xrayviewer.batch.cluster`` alone,
  and that module only lazily (by the CLI when ``--cluster`` is given).
Function-level (lazy) imports count for the first three rules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "xrayviewer"
# The launcher decides between CLI and window; it alone may import the GUI (lazily).
COMPOSITION_ROOTS = {"xrayviewer.launcher"}
# The viewer's state/logic and its task mechanism: Tk-free, so they are tested without a display.
TK_FREE_GUI = {"xrayviewer.gui.session", "xrayviewer.gui.worker", "xrayviewer.gui.readout"}
MAX_GUI_MODULE_LINES = 600
DASK_MODULE = "xrayviewer.batch.cluster"


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts)
        if name.endswith(".__init__"):
            name = name[: -len(".__init__")]
        out.append((name, path))
    return out


def _imports(path: Path, module: str) -> list[tuple[str, bool]]:
    """(imported module, is_top_level) for each import in a file; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    top_level_nodes = {id(n) for n in tree.body}
    # Imports under `if TYPE_CHECKING:` at top level are not executed; treat them as lazy.
    result = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                mod = f"{prefix}.{node.module}" if node.module else prefix
                names = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            result.append((n, id(node) in top_level_nodes))
    return result


def _violations() -> list[str]:
    bad = []
    for module, path in _modules():
        in_gui = module == "xrayviewer.gui" or module.startswith("xrayviewer.gui.")
        in_training = module == "xrayviewer.training" or module.startswith("xrayviewer.training.")
        for imported, top in _imports(path, module):
            root = imported.split(".")[0]
            if root in ("tkinter", "_tkinter", "tkinterdnd2") and (not in_gui or module in TK_FREE_GUI):
                bad.append(f"{module} imports {imported} (only xrayviewer.gui may use Tk, and not its session)")
            if imported.startswith("xrayviewer.training") and not in_training:
                bad.append(f"{module} imports {imported} (nothing may import the training module)")
            if imported.startswith("xrayviewer.gui") and not in_gui and module not in COMPOSITION_ROOTS:
                bad.append(f"{module} imports {imported} (nothing may import the GUI)")
            if top and root in ("tensorflow", "keras") and not in_training:
                bad.append(f"{module} imports {imported} at module level (TensorFlow must load lazily)")
            if root in ("dask", "distributed") and module != DASK_MODULE:
                bad.append(f"{module} imports {imported} (only {DASK_MODULE} may use Dask, an optional extra)")
            if top and imported.startswith(DASK_MODULE) and module != DASK_MODULE:
                bad.append(f"{module} imports {imported} at module level (Dask is loaded only for --cluster)")
    return bad


def test_import_rules_hold() -> None:
    assert _violations() == []


def test_gui_modules_stay_small() -> None:
    """A thin Tk view over a tested session: no GUI module grows past the limit again."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PKG / "gui").glob("*.py")}
    assert max(sizes.values()) <= MAX_GUI_MODULE_LINES, sizes


def test_rule_checker_catches_a_violation(tmp_path: Path) -> None:
    """The walker itself must be able to fail: feed it a module that breaks every rule."""
    fake = tmp_path / "bad.py"
    fake.write_text("import tkinter\nimport tensorflow as tf\nfrom xrayviewer.training import x\n")
    found = _imports(fake, "xrayviewer.imaging.bad")
    assert ("tkinter", True) in found
    assert ("tensorflow", True) in found
    assert any(n.startswith("xrayviewer.training") for n, _ in found)


def test_cli_and_imaging_do_not_load_tensorflow() -> None:
    code = (
        "import sys, xrayviewer.cli, xrayviewer.imaging, xrayviewer.modellayer.preprocessing, xrayviewer.gui.session;"
        "import xrayviewer.batch;"
        "from xrayviewer.imaging import load_image;"
        "bad=[m for m in ('tensorflow','keras','tkinter','dask','distributed') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
