"""Rooms with one-way doors: the README's layer table as a contract, checked on every module's AST.

The table in README, "Architecture", is read by this test: each row names a room (a package
or a few modules) and the rooms it may import. A module importing a room its row does not
list fails, and so does a module that belongs to no row. Besides the table (same section):

- inside the model layer, a model module (lung, classifier, gate, opacity) imports the shared
  modules, never another model module, and the shared modules import no model module;
- inside training, no ``*_task`` module imports another task;
- only ``xrayviewer/gui`` imports tkinter (or tkinterdnd2), and not even all of it: the
  viewer's session, its background-task mechanism and its readout are Tk-free;
- only the model layer, inference and training import TensorFlow/Keras, and app code never at
  module level, so the window and the CLI start before TensorFlow has loaded;
- Dask (the optional ``cluster`` extra) is imported by ``xrayviewer.batch.cluster`` alone,
  and that module only lazily (by the CLI when ``--cluster`` is given).

Function-level (lazy) imports count. Every module may read the package root
(``xrayviewer.__version__``, ``RESEARCH_NOTICE``). The checker is fed synthetic violations
too, so it is known to fail when it should.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "xrayviewer"
README = PKG.parent / "README.md"
ROOT = "xrayviewer"
# The viewer's state/logic and its task mechanism: Tk-free, so they are tested without a display.
TK_FREE_GUI = {"xrayviewer.gui.session", "xrayviewer.gui.worker", "xrayviewer.gui.readout"}
MAX_GUI_MODULE_LINES = 600
DASK_MODULE = "xrayviewer.batch.cluster"
MODEL_LAYER = "xrayviewer.modellayer"
MODEL_MODULES = frozenset(f"{MODEL_LAYER}.{m}" for m in ("lung", "classifier", "gate", "opacity", "tuberculosis"))
SHARED_MODEL_MODULES = frozenset({MODEL_LAYER} | {f"{MODEL_LAYER}.{m}" for m in
                                                  ("cards", "common", "modelstore", "preprocessing", "postprocess")})
TENSORFLOW_ROOMS = {"modellayer", "inference", "training"}
TASK = re.compile(r"^(xrayviewer\.training\.\w+_task)(\.|$)")


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Room:
    name: str
    modules: tuple[str, ...]
    may_import: frozenset[str]


def read_rooms(markdown: str) -> dict[str, Room]:
    """Rooms from the table in the README's "Architecture" section.

    First cell: the room's modules in backticks (``.name`` is short for ``xrayviewer.name``;
    the room is named after the first one's last part). Last cell: "—", the rooms it may
    import separated by commas, or "every room but a, b"; parenthesised notes are ignored.
    """
    section = markdown.split("\n## Architecture\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `xrayviewer")]
    parsed: list[tuple[str, tuple[str, ...], str]] = []
    for line in rows:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        modules = tuple(ROOT + m if m.startswith(".") else m for m in re.findall(r"`([^`]+)`", cells[0]))
        parsed.append((modules[0].rsplit(".", 1)[-1], modules, re.sub(r"\(.*?\)", "", cells[-1]).strip()))
    names = {name for name, _, _ in parsed}
    rooms = {}
    for name, modules, cell in parsed:
        if cell in ("—", "-", ""):
            allowed: set[str] = set()
        elif cell.startswith("every room but "):
            allowed = names - {name} - {r.strip() for r in cell[len("every room but "):].split(",")}
        else:
            allowed = {r.strip() for r in cell.split(",")}
        unknown = allowed - names
        assert not unknown, f"README table: room {name!r} may import unknown rooms {sorted(unknown)}"
        rooms[name] = Room(name, modules, frozenset(allowed))
    return rooms


ROOMS = read_rooms(README.read_text(encoding="utf-8"))


def room_of(name: str, rooms: dict[str, Room]) -> str | None:
    """The room whose module is the longest dotted prefix of ``name``; None if none is."""
    best, length = None, -1
    for room in rooms.values():
        for m in room.modules:
            if (name == m or name.startswith(m + ".")) and len(m) > length:
                best, length = room.name, len(m)
    return best


def _is_module(name: str) -> bool:
    path = PKG.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


# ------------------------------------------------------------------ the walker
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


def _model_module(name: str) -> str | None:
    return next((m for m in MODEL_MODULES if name == m or name.startswith(m + ".")), None)


def _room_violations(module: str, room: str, imported: str, rooms: dict[str, Room]) -> list[str]:
    target = room_of(imported, rooms)
    if target is None:
        if imported != ROOT and _is_module(imported):  # a module of no room (the package root's names pass)
            return [f"{module} imports {imported}, which belongs to no room of the README's table"]
        return []
    bad = []
    if target != room and target not in rooms[room].may_import:
        bad.append(f"{module} imports {imported}: {room} may not import {target} (README, Architecture)")
    if room == "modellayer":
        own, other = _model_module(module), _model_module(imported)
        if other is not None and other != own:
            who = "a model module" if own else "a shared model-layer module"
            bad.append(f"{module} imports {imported}: {who} imports no model module sideways "
                       "(shared helpers live in modellayer.common)")
    task, other_task = TASK.match(module), TASK.match(imported)
    if task and other_task and other_task.group(1) != task.group(1):
        bad.append(f"{module} imports {imported}: training tasks import no other task (shared: training.runinfo)")
    return bad


def _violations(modules: Iterable[tuple[str, Path]], rooms: dict[str, Room] = ROOMS) -> list[str]:
    bad: list[str] = []
    for module, path in modules:
        room = room_of(module, rooms)
        if room is None and module != ROOT:
            bad.append(f"{module} belongs to no room of the README's table (add it to a row)")
        if room == "modellayer" and module not in MODEL_MODULES | SHARED_MODEL_MODULES:
            bad.append(f"{module}: name it a model module or a shared module of the model layer "
                       "(tests/test_architecture.py)")
        in_gui = room == "gui"
        for imported, top in _imports(path, module):
            root = imported.split(".")[0]
            if root == ROOT and room is not None:
                bad.extend(v for v in _room_violations(module, room, imported, rooms) if v not in bad)
            if root in ("tkinter", "_tkinter", "tkinterdnd2") and (not in_gui or module in TK_FREE_GUI):
                bad.append(f"{module} imports {imported} (only xrayviewer.gui may use Tk, and not its session)")
            if root in ("tensorflow", "keras"):
                if room not in TENSORFLOW_ROOMS:
                    bad.append(f"{module} imports {imported} (only {', '.join(sorted(TENSORFLOW_ROOMS))} "
                               "use TensorFlow)")
                elif top and room != "training":
                    bad.append(f"{module} imports {imported} at module level (TensorFlow must load lazily)")
            if root in ("dask", "distributed") and module != DASK_MODULE:
                bad.append(f"{module} imports {imported} (only {DASK_MODULE} may use Dask, an optional extra)")
            if top and imported.startswith(DASK_MODULE) and module != DASK_MODULE:
                bad.append(f"{module} imports {imported} at module level (Dask is loaded only for --cluster)")
    return bad


# ------------------------------------------------------------------ tests
def test_import_rules_hold() -> None:
    assert _violations(_modules()) == []


def test_table_keeps_training_and_gui_leaves() -> None:
    """Nothing imports training; only the launcher (the composition root) imports the GUI;
    the model layer imports no app room but errors."""
    assert {"errors", "imaging", "modellayer", "inference", "gui", "cli", "training"} <= set(ROOMS)
    assert [r.name for r in ROOMS.values() if "training" in r.may_import] == []
    assert [r.name for r in ROOMS.values() if "gui" in r.may_import] == ["launcher"]
    assert ROOMS["modellayer"].may_import == {"errors"}
    assert "xrayviewer.cli_pacs" in ROOMS["cli"].modules


def test_table_parser_reads_every_form() -> None:
    rooms = read_rooms("\n## Architecture\n\n| room | role | may import |\n|---|---|---|\n"
                       "| `xrayviewer.a` | x | — |\n| `xrayviewer.b`, `.c` | y | a (lazily) |\n"
                       "| `xrayviewer.d` | z | every room but b |\n\n## Next\n| `xrayviewer.e` | - | - |\n")
    assert {n: (r.modules, set(r.may_import)) for n, r in rooms.items()} == {
        "a": (("xrayviewer.a",), set()), "b": (("xrayviewer.b", "xrayviewer.c"), {"a"}),
        "d": (("xrayviewer.d",), {"a"})}
    assert room_of("xrayviewer.c.x", rooms) == "b" and room_of("xrayviewer.cc", rooms) is None


VIOLATIONS = [
    ("xrayviewer.modellayer.gate", "from .classifier import softmax\n", "no model module sideways"),
    ("xrayviewer.modellayer.opacity", "def f():\n    from .lung import image_shape\n", "no model module sideways"),
    ("xrayviewer.modellayer.common", "from .lung import LungSegmenter\n", "shared model-layer module"),
    ("xrayviewer.modellayer.lung", "from ..inference import Analyzer\n", "modellayer may not import inference"),
    ("xrayviewer.modellayer.extra", "x = 1\n", "name it a model module or a shared module"),
    ("xrayviewer.imaging.bad", "from xrayviewer.training import x\n", "imaging may not import training"),
    ("xrayviewer.reporting.bad", "def f():\n    from ..gui import app\n", "reporting may not import gui"),
    ("xrayviewer.cli", "from .training import lung_task\n", "cli may not import training"),
    ("xrayviewer.rendering.bad", "from ..modellayer import common\n", "rendering may not import modellayer"),
    ("xrayviewer.newthing", "x = 1\n", "belongs to no room"),
    ("xrayviewer.training.gate_task", "from .classifier_task import CLASS_NAMES\n", "no other task"),
    ("xrayviewer.training.lung_task", "def f():\n    from . import opacity_task\n", "no other task"),
    ("xrayviewer.imaging.bad", "import tkinter\n", "only xrayviewer.gui may use Tk"),
    ("xrayviewer.gui.session", "import tkinter as tk\n", "only xrayviewer.gui may use Tk"),
    ("xrayviewer.reporting.bad", "def f():\n    import tensorflow\n", "use TensorFlow"),
    ("xrayviewer.modellayer.lung", "import keras\n", "at module level"),
    ("xrayviewer.imaging.bad", "import dask\n", "only xrayviewer.batch.cluster may use Dask"),
]


@pytest.mark.parametrize(("module", "source", "expected"), VIOLATIONS)
def test_checker_catches_a_synthetic_violation(tmp_path: Path, module: str, source: str, expected: str) -> None:
    """The checker itself must be able to fail: each module breaks one rule."""
    fake = tmp_path / "mod.py"
    fake.write_text(source)
    found = _violations([(module, fake)])
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(("module", "source"), [
    ("xrayviewer.modellayer.gate", "from . import modelstore\nfrom .common import softmax\nfrom ..errors import E\n"),
    ("xrayviewer.inference.analyzer", "from ..modellayer import classifier, gate, lung, opacity\n"),
    ("xrayviewer.training.lung_task", "from ..modellayer.lung import LungSegmenter\nfrom .runinfo import x\n"),
    ("xrayviewer.reporting.pdf", "from .. import RESEARCH_NOTICE, __version__\n"),
    ("xrayviewer.launcher", "def f():\n    from .gui.app import main\n"),
])
def test_checker_passes_allowed_imports(tmp_path: Path, module: str, source: str) -> None:
    fake = tmp_path / "mod.py"
    fake.write_text(source)
    assert _violations([(module, fake)]) == []


def test_gui_modules_stay_small() -> None:
    """A thin Tk view over a tested session: no GUI module grows past the limit again."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (PKG / "gui").glob("*.py")}
    assert max(sizes.values()) <= MAX_GUI_MODULE_LINES, sizes


def test_cli_imaging_and_model_layer_do_not_load_tensorflow() -> None:
    code = (
        "import sys, xrayviewer.cli, xrayviewer.imaging, xrayviewer.gui.session;"
        "import xrayviewer.modellayer.classifier, xrayviewer.modellayer.gate, xrayviewer.modellayer.lung;"
        "import xrayviewer.modellayer.opacity, xrayviewer.modellayer.modelstore;"
        "import xrayviewer.batch;"
        "from xrayviewer.imaging import load_image;"
        "bad=[m for m in ('tensorflow','keras','tkinter','dask','distributed') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
