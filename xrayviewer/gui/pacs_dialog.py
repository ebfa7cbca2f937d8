"""The viewer's PACS dialogs: File > Open from PACS (C-FIND by patient, study date or
accession, then C-GET, or C-MOVE to a storage SCP we run, of the chosen study into the
viewer), File > Send results to PACS (SEG + Secondary Capture of the analysed film, in the
film's own study), and the PACS node list (Settings > PACS nodes), kept in the settings folder.

The network work runs on the viewer's background tasks (:mod:`.worker`): the window stays
responsive, and errors (each naming node, study and file) are shown in the dialog.
"""

from __future__ import annotations

import os
import tempfile
import tkinter as tk
from pathlib import Path
from tkinter import messagebox, ttk
from typing import Any

from ..errors import XRayViewerError
from ..pacs import PacsClient, PacsError, PacsNode, Retrieved, load_nodes, not_chest_message, save_nodes


def retrieve_folder() -> Path:
    """Where studies fetched from a PACS are kept: ``XRAYVIEWER_CACHE_DIR``/pacs, else the
    per-user cache folder (they hold patient data: delete them as your site requires)."""
    env = os.environ.get("XRAYVIEWER_CACHE_DIR")
    if env:
        return Path(env) / "pacs"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("xrayviewer", appauthor=False)) / "pacs"


def _nodes_or_message(parent: tk.Misc) -> list[PacsNode]:
    try:
        nodes = load_nodes()
    except PacsError as exc:
        messagebox.showerror("PACS", str(exc), parent=parent)
        return []
    return nodes


class NodesDialog(tk.Toplevel):
    """Add, change, test (C-ECHO) and remove PACS nodes."""

    def __init__(self, master: tk.Misc, tasks: Any = None, on_change: Any = None) -> None:
        super().__init__(master)
        self.title("PACS nodes")
        if tasks is None:  # opened from Settings: a task runner of its own, closed with the dialog
            from .worker import BackgroundTasks

            tasks = BackgroundTasks(self)
            self.bind("<Destroy>", lambda e: tasks.close() if e.widget is self else None, add="+")
        self.tasks = tasks
        self.on_change = on_change
        self.nodes = _nodes_or_message(master)
        f = ttk.Frame(self, padding=12)
        f.pack(fill="both", expand=True)
        self.listbox = tk.Listbox(f, height=6, width=50, exportselection=False)
        self.listbox.grid(row=0, column=0, columnspan=4, sticky="nsew")
        self.listbox.bind("<<ListboxSelect>>", lambda e: self._load_selected())
        self.vars = {k: tk.StringVar() for k in ("name", "ae_title", "host", "port", "tls_ca", "tls_cert", "tls_key")}
        self.tls = tk.BooleanVar(value=False)
        labels = (("name", "Name"), ("ae_title", "Called AE title"), ("host", "Host"), ("port", "Port"),
                  ("tls_ca", "TLS CA file"), ("tls_cert", "TLS client certificate"), ("tls_key", "TLS key"))
        for row, (key, label) in enumerate(labels, start=1):
            ttk.Label(f, text=label + ":").grid(row=row, column=0, sticky="w", pady=(4, 0))
            ttk.Entry(f, textvariable=self.vars[key], width=36).grid(row=row, column=1, columnspan=3, sticky="we",
                                                                     pady=(4, 0))
        ttk.Checkbutton(f, text="DICOM over TLS", variable=self.tls).grid(row=8, column=1, sticky="w", pady=(4, 0))
        buttons = ttk.Frame(f)
        buttons.grid(row=9, column=0, columnspan=4, sticky="e", pady=(10, 0))
        ttk.Button(buttons, text="Close", command=self.destroy).pack(side="right")
        ttk.Button(buttons, text="Remove", command=self.remove).pack(side="right", padx=4)
        ttk.Button(buttons, text="Test (C-ECHO)", command=self.test).pack(side="right", padx=4)
        ttk.Button(buttons, text="Save node", command=self.save).pack(side="right", padx=4)
        self.status = tk.StringVar(value="")
        ttk.Label(f, textvariable=self.status, wraplength=420).grid(row=10, column=0, columnspan=4, sticky="w")
        self._refresh()
        self.bind("<Escape>", lambda e: self.destroy())

    def _refresh(self) -> None:
        self.listbox.delete(0, "end")
        for n in self.nodes:
            self.listbox.insert("end", f"{n}{'  [TLS]' if n.tls else ''}")

    def _load_selected(self) -> None:
        sel = self.listbox.curselection()
        if not sel:
            return
        n = self.nodes[sel[0]]
        for key, var in self.vars.items():
            var.set(str(getattr(n, key)))
        self.tls.set(n.tls)

    def node_from_fields(self) -> PacsNode:
        v = {k: var.get().strip() for k, var in self.vars.items()}
        spec = f"{v['ae_title']}@{v['host']}:{v['port']}"
        return PacsNode.parse(spec, name=v["name"] or spec, tls=bool(self.tls.get()), tls_ca=v["tls_ca"],
                              tls_cert=v["tls_cert"], tls_key=v["tls_key"])

    def save(self) -> None:
        try:
            node = self.node_from_fields()
        except PacsError as exc:
            self.status.set(str(exc))
            return
        self.nodes = [n for n in self.nodes if n.name != node.name] + [node]
        save_nodes(self.nodes)
        self._refresh()
        self.status.set(f"Saved {node}")
        if self.on_change:
            self.on_change()

    def remove(self) -> None:
        sel = self.listbox.curselection()
        if sel:
            del self.nodes[sel[0]]
            save_nodes(self.nodes)
            self._refresh()
            if self.on_change:
                self.on_change()

    def test(self) -> None:
        try:
            node = self.node_from_fields()
        except PacsError as exc:
            self.status.set(str(exc))
            return
        self.status.set(f"C-ECHO {node}...")
        self.tasks.submit("pacs-echo", lambda post: PacsClient(node, retries=0, timeout=10).echo(),
                          lambda _r: self.status.set(f"{node} answers (C-ECHO)"),
                          lambda exc: self.status.set(str(exc)))


class _NodeChooser:
    """A node combobox (saved nodes) with a 'Nodes...' button."""

    def __init__(self, parent: ttk.Frame, dialog: tk.Toplevel, tasks: Any, row: int) -> None:
        self.dialog = dialog
        self.tasks = tasks
        ttk.Label(parent, text="PACS:").grid(row=row, column=0, sticky="w")
        self.var = tk.StringVar()
        self.box = ttk.Combobox(parent, state="readonly", textvariable=self.var, width=40)
        self.box.grid(row=row, column=1, columnspan=2, sticky="we")
        ttk.Button(parent, text="Nodes...", command=lambda: NodesDialog(dialog, tasks, on_change=self.reload)).grid(
            row=row, column=3, sticky="w", padx=4)
        self.nodes: list[PacsNode] = []
        self.reload()

    def reload(self) -> None:
        self.nodes = _nodes_or_message(self.dialog)
        self.box.configure(values=[str(n) for n in self.nodes])
        if self.nodes and self.var.get() not in [str(n) for n in self.nodes]:
            self.var.set(str(self.nodes[0]))

    def node(self) -> PacsNode | None:
        return next((n for n in self.nodes if str(n) == self.var.get()), None)


class OpenFromPacsDialog(tk.Toplevel):
    """Find studies, fetch the chosen one, open its chest film in the viewer."""

    COLUMNS = (("date", "Study date", 90), ("patient", "Patient", 160), ("pid", "Patient ID", 110),
               ("modalities", "Modalities", 80), ("n", "Images", 60), ("description", "Description", 180))

    def __init__(self, app: Any) -> None:
        super().__init__(app.root)
        self.title("Open from PACS")
        self.app = app
        f = ttk.Frame(self, padding=12)
        f.pack(fill="both", expand=True)
        self.chooser = _NodeChooser(f, self, app.tasks, row=0)
        self.fields = {k: tk.StringVar() for k in ("patient_id", "patient_name", "date_from", "date_to", "accession")}
        for row, (key, label) in enumerate((("patient_id", "Patient ID"), ("patient_name", "Patient name (DOE^*)"),
                                            ("date_from", "Study date from (YYYYMMDD)"),
                                            ("date_to", "to (YYYYMMDD)"), ("accession", "Accession number")), 1):
            ttk.Label(f, text=label + ":").grid(row=row, column=0, sticky="w", pady=(4, 0))
            ttk.Entry(f, textvariable=self.fields[key], width=30).grid(row=row, column=1, sticky="w", pady=(4, 0))
        ttk.Label(f, text="C-MOVE port (empty: C-GET):").grid(row=6, column=0, sticky="w", pady=(4, 0))
        self.move_port = tk.StringVar()
        ttk.Entry(f, textvariable=self.move_port, width=8).grid(row=6, column=1, sticky="w", pady=(4, 0))
        ttk.Button(f, text="Search", command=self.search).grid(row=1, column=2, sticky="w", padx=6)
        self.table = ttk.Treeview(f, columns=[c for c, _, _ in self.COLUMNS], show="headings", height=8,
                                  selectmode="browse")
        for col, title, width in self.COLUMNS:
            self.table.heading(col, text=title)
            self.table.column(col, width=width, anchor="w")
        self.table.grid(row=7, column=0, columnspan=4, sticky="nsew", pady=(8, 0))
        self.table.bind("<Double-1>", lambda e: self.open_selected())
        buttons = ttk.Frame(f)
        buttons.grid(row=8, column=0, columnspan=4, sticky="e", pady=(8, 0))
        ttk.Button(buttons, text="Close", command=self.destroy).pack(side="right")
        ttk.Button(buttons, text="Open study", command=self.open_selected).pack(side="right", padx=6)
        self.status = tk.StringVar(value="Search by patient, study date or accession number.")
        ttk.Label(f, textvariable=self.status, wraplength=640).grid(row=9, column=0, columnspan=4, sticky="w")
        self.studies: dict[str, Any] = {}
        self.retrieved: Retrieved | None = None
        self.bind("<Return>", lambda e: self.search())
        self.bind("<Escape>", lambda e: self.destroy())

    def search(self) -> None:
        node = self.chooser.node()
        if node is None:
            self.status.set("No PACS node: add one with Nodes...")
            return
        v = {k: var.get().strip() for k, var in self.fields.items()}
        date = f"{v['date_from']}-{v['date_to']}" if v["date_from"] and v["date_to"] and v["date_from"] != v["date_to"] \
            else (v["date_from"] or v["date_to"])
        if not (v["patient_id"] or v["patient_name"] or date or v["accession"]):
            self.status.set("Give a patient ID or name, a study date or an accession number.")
            return
        self.status.set(f"Searching {node}...")
        self.app.tasks.submit(
            "pacs-find", lambda post: PacsClient(node).find_studies(
                patient_id=v["patient_id"], patient_name=v["patient_name"], study_date=date,
                accession_number=v["accession"]),
            self._found, lambda exc: self.status.set(str(exc)))

    def _found(self, studies: list[Any]) -> None:
        self.table.delete(*self.table.get_children())
        self.studies = {s.study_uid: s for s in studies}
        for s in studies:
            self.table.insert("", "end", iid=s.study_uid, values=(
                s.study_date, s.patient_name, s.patient_id, "/".join(s.modalities),
                "" if s.instances is None else s.instances, s.description))
        self.status.set(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} found"
                        + (": double-click one to open it." if studies else "."))

    def open_selected(self) -> None:
        sel = self.table.selection()
        node = self.chooser.node()
        if not sel or node is None:
            self.status.set("Choose a study first.")
            return
        uid = sel[0]
        port = self.move_port.get().strip()
        if port and not port.isdigit():
            self.status.set(f"'{port}' is not a port number.")
            return
        self.status.set(f"Fetching study {uid} from {node}...")
        dest = retrieve_folder()
        self.app.tasks.submit(
            "pacs-get", lambda post: PacsClient(node).retrieve(uid, dest, method="move" if port else "get",
                                                               move_port=int(port or 0)),
            lambda got: self._retrieved(node, got), lambda exc: self.status.set(str(exc)))

    def _retrieved(self, node: PacsNode, got: Retrieved) -> None:
        self.retrieved = got
        why = not_chest_message(node, got)
        if why:
            self.status.set(why)
            self.bell()
            return
        self.status.set(f"{len(got.files)} instance(s) in {got.folder}; opening the chest film.")
        if len(got.chest_films) > 1:
            self.app.open_folder(got.folder)
        else:
            self.app.open_path(got.chest_films[0])


class SendResultsDialog(tk.Toplevel):
    """Send the current film's SEG and Secondary Capture to a PACS, in the film's own study."""

    def __init__(self, app: Any) -> None:
        super().__init__(app.root)
        self.title("Send results to PACS")
        self.app = app
        f = ttk.Frame(self, padding=12)
        f.pack(fill="both", expand=True)
        self.chooser = _NodeChooser(f, self, app.tasks, row=0)
        ttk.Label(f, wraplength=460, text=(
            "Sends a DICOM SEG (lung fields, opacity) and a Secondary Capture of the overlay. They go into the "
            "film's own study with its patient identity, as results for the PACS the film came from; "
            "to share results outside the hospital, use de-identified exports instead.")).grid(
            row=1, column=0, columnspan=4, sticky="w", pady=(8, 0))
        buttons = ttk.Frame(f)
        buttons.grid(row=2, column=0, columnspan=4, sticky="e", pady=(10, 0))
        ttk.Button(buttons, text="Close", command=self.destroy).pack(side="right")
        self.send_button = ttk.Button(buttons, text="Send", command=self.send)
        self.send_button.pack(side="right", padx=6)
        self.status = tk.StringVar(value=self._precondition() or "Ready to send.")
        ttk.Label(f, textvariable=self.status, wraplength=460).grid(row=3, column=0, columnspan=4, sticky="w")
        self.results: list[Any] = []
        self.bind("<Escape>", lambda e: self.destroy())

    def _precondition(self) -> str | None:
        s = self.app.session
        if s.image is None:
            return "Open a DICOM film first."
        if not s.image.is_dicom:
            return "Only results of DICOM films can go to a PACS (a PNG or JPEG has no study to join)."
        if s.analysis is None or s.analysis.lung_labels is None:
            return "Analyse the film first (A): there are no results to send."
        return None

    def send(self) -> None:
        why = self._precondition()
        node = self.chooser.node()
        if why or node is None:
            self.status.set(why or "No PACS node: add one with Nodes...")
            return
        image, result = self.app.session.image, self.app.session.analysis
        self.status.set(f"Sending to {node}...")
        self.send_button.state(["disabled"])
        self.app.tasks.submit("pacs-send", lambda post: send_results(node, result, image), self._sent,
                              self._failed)

    def _sent(self, results: list[Any]) -> None:
        self.send_button.state(["!disabled"])
        self.results = results
        lines = [f"{Path(r.path).name}: {r.status}{' (' + r.message + ')' if r.message else ''}" for r in results]
        ok = sum(r.ok for r in results)
        self.status.set(f"{ok} of {len(results)} sent. " + "; ".join(lines))

    def _failed(self, exc: BaseException) -> None:
        self.send_button.state(["!disabled"])
        self.status.set(str(exc) if isinstance(exc, XRayViewerError) else f"internal error: {exc}")


def send_results(node: PacsNode, result: Any, image: Any) -> list[Any]:
    """Build SEG + SC (identified, in the film's study) and C-STORE them; one result per file."""
    from ..reporting.dicom_out import write_secondary_capture, write_segmentation

    stem = "results"
    with tempfile.TemporaryDirectory(prefix="xrayviewer-send-") as tmp:
        files = [write_segmentation(result, image, Path(tmp) / f"{stem}.seg.dcm", phi=True),
                 write_secondary_capture(result, image, Path(tmp) / f"{stem}.sc.dcm", phi=True)]
        return PacsClient(node).send(files)
