"""The viewer's PACS dialogs against Orthanc (loopback only): Open from PACS finds and fetches
a study into the viewer, Send results to PACS puts SEG + SC into the film's study, a study
without a chest film is named in the dialog, and nodes are kept from Settings."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from test_batch import ThresholdAnalyzer
from test_gui import app, pump  # noqa: F401  (the viewer fixture)
from test_pacs import Orthanc, orthanc  # noqa: F401  (the PACS fixture)

from xrayviewer.pacs import PacsClient, load_nodes, save_nodes


@pytest.fixture()
def nodes(orthanc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: F811
    monkeypatch.setenv("XRAYVIEWER_CONFIG_DIR", str(tmp_path / "config"))
    node = orthanc.node.__class__(orthanc.node.ae_title, orthanc.node.host, orthanc.node.port, name="test PACS")
    save_nodes([node])
    return node


def test_open_from_pacs_analyse_and_send_back(app, orthanc, nodes, dicom_dir: Path) -> None:  # noqa: F811
    film = dicom_dir / "966_fixed.dcm"
    src = pydicom.dcmread(film, stop_before_pixels=True)
    assert PacsClient(nodes).send([film])[0].ok
    dlg = app.pacs_dialog("OpenFromPacsDialog")
    assert dlg.chooser.node() == nodes
    dlg.fields["patient_id"].set(str(src.PatientID))
    dlg.search()
    pump(app, lambda: bool(dlg.table.get_children()))
    assert dlg.table.get_children() == (src.StudyInstanceUID,)
    dlg.table.selection_set(src.StudyInstanceUID)
    dlg.open_selected()
    pump(app, lambda: app.session.image is not None)
    assert app.session.path.name == f"{src.SOPInstanceUID}.dcm" and "pacs" in str(app.session.path)
    # Results of the (stand-in) analysis go back into the film's study.
    app.session.analysis = ThresholdAnalyzer().analyze_batch([app.session.image])[0]
    send = app.pacs_dialog("SendResultsDialog")
    send.send()
    pump(app, lambda: bool(send.results))
    assert [r.status for r in send.results] == ["sent", "sent"], send.status.get()
    study = PacsClient(nodes).find_studies(study_uid=src.StudyInstanceUID)[0]
    assert study.instances == 3 and "SEG" in study.modalities
    send.destroy()
    dlg.destroy()


def test_a_study_without_a_chest_film_is_named(app, orthanc, nodes, dicom_dir: Path) -> None:  # noqa: F811
    ct = dicom_dir / "non_cxr" / "CT_small.dcm"
    src = pydicom.dcmread(ct, stop_before_pixels=True)
    assert PacsClient(nodes).send([ct])[0].ok
    dlg = app.pacs_dialog("OpenFromPacsDialog")
    dlg.fields["patient_id"].set(str(src.PatientID))
    dlg.search()
    pump(app, lambda: bool(dlg.table.get_children()))
    dlg.table.selection_set(src.StudyInstanceUID)
    dlg.open_selected()
    pump(app, lambda: "chest" in dlg.status.get())
    msg = dlg.status.get()
    assert "holds no chest radiograph" in msg and src.StudyInstanceUID in msg and "test PACS" in msg and "CT" in msg
    assert app.session.image is None
    dlg.destroy()


def test_send_needs_an_analysed_dicom_film(app, nodes) -> None:  # noqa: F811
    send = app.pacs_dialog("SendResultsDialog")
    assert "Open a DICOM film first" in send.status.get()
    send.send()
    assert not send.results
    send.destroy()


def test_settings_keep_pacs_nodes(app, nodes) -> None:  # noqa: F811
    settings = app.show_settings()
    editor = settings._pacs_nodes()
    for key, value in (("name", "second"), ("ae_title", "PACS2"), ("host", "127.0.0.1"), ("port", "11112")):
        editor.vars[key].set(value)
    editor.save()
    assert [n.name for n in load_nodes()] == ["test PACS", "second"]
    editor.vars["port"].set("not a port")
    editor.save()
    assert "AET@HOST:PORT" in editor.status.get()
    editor.destroy()
    settings.destroy()
