"""Round trip with a real PACS (Orthanc, started here on a free loopback port with a throwaway
storage folder) and the failure cases against Orthanc or pynetdicom's own SCP. All traffic
goes to 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import unavailable

from xrayviewer.cli import main
from xrayviewer.pacs import PacsClient, PacsError, PacsNode, collect_outputs, load_nodes, not_chest_message, save_nodes

AET = "ORTHANC"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    def __init__(self, root: Path) -> None:
        self.dicom_port = free_port()
        self.move_port = free_port()  # where our C-MOVE storage SCP listens
        self.root = root
        cfg = {
            "Name": "xrayviewer-test", "StorageDirectory": str(root / "db"), "IndexDirectory": str(root / "db"),
            "DicomAet": AET, "DicomPort": self.dicom_port, "HttpServerEnabled": False, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": [], "DicomCheckCalledAet": True,
            "DicomModalities": {"xrayviewer": ["XRAYVIEWER", "127.0.0.1", self.move_port]},
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True, "DicomCheckModalityHost": True,
            "StorageCompression": False, "ConcurrentJobs": 1,
        }
        (root / "orthanc.json").write_text(json.dumps(cfg))
        self.log = (root / "orthanc.log").open("w")
        self.proc = subprocess.Popen([shutil.which("Orthanc") or "Orthanc", str(root / "orthanc.json")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.node = PacsNode(AET, "127.0.0.1", self.dicom_port)
        deadline = time.monotonic() + 60
        while True:
            try:
                PacsClient(self.node, retries=0, timeout=5).echo()
                break
            except PacsError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Orthanc did not start: " + (root / "orthanc.log").read_text()[-2000:])
                time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    if shutil.which("Orthanc") is None:
        msg = "Orthanc is not installed (apt-get install orthanc; .ci/run installs it): PACS round trip not run"
        unavailable(msg)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XRAYVIEWER_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("XRAYVIEWER_HISTORY_DB", str(tmp_path / "history.sqlite3"))
    return tmp_path


def test_round_trip_store_find_retrieve_analyse_send_back_and_read_with_highdicom(
        orthanc: Orthanc, isolated: Path, dicom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import highdicom as hd

    film = dicom_dir / "966_fixed.dcm"  # chest DX, JPEG 2000 lossless
    src = pydicom.dcmread(film)
    client = PacsClient(orthanc.node)
    # The hospital side: the film is in the PACS.
    assert [r.status for r in client.send([film])] == ["sent"]
    # Find it through xrayviewer (by patient ID, then by date) and fetch it with C-GET.
    studies = client.find_studies(patient_id=str(src.PatientID))
    assert [s.study_uid for s in studies] == [src.StudyInstanceUID]
    assert studies[0].instances == 1
    assert client.find_studies(study_date=f"{src.SeriesDate}-{src.SeriesDate}") or True  # date ranges are accepted
    got = client.retrieve(src.StudyInstanceUID, isolated / "inbox")
    assert got.folder == isolated / "inbox" / src.StudyInstanceUID and len(got.files) == 1 and got.chest_films
    back = pydicom.dcmread(got.files[0])
    assert back.SOPInstanceUID == src.SOPInstanceUID
    np.testing.assert_array_equal(back.pixel_array, src.pixel_array)
    assert not list((isolated / "inbox").glob(".*partial"))
    # Analyse it with the bundled models; results stay in the patient's study (--phi) to go back.
    out = isolated / "results"
    assert main(["analyze", str(got.folder), "--out", str(out), "--format", "csv,dicom", "--phi", "--quiet"]) == 0
    capsys.readouterr()
    # Send SEG + SC back with the command line.
    node = f"{AET}@127.0.0.1:{orthanc.dicom_port}"
    assert main(["send", str(out), "--to", node]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sent") >= 2 and "2 sent, 0 failed" in printed
    # Find them in Orthanc and read them back (this time by C-MOVE to our storage SCP).
    study = client.find_studies(study_uid=src.StudyInstanceUID)[0]
    assert study.instances == 3 and "SEG" in study.modalities
    again = PacsClient(orthanc.node).retrieve(src.StudyInstanceUID, isolated / "again", method="move",
                                              move_port=orthanc.move_port)
    segs = [f for f in again.files if pydicom.dcmread(f, stop_before_pixels=True).Modality == "SEG"]
    assert len(segs) == 1 and len(again.chest_films) == 1  # our SC is not a film to analyse
    seg = hd.seg.segread(segs[0])
    labels = [seg.get_segment_description(i).segment_label for i in seg.segment_numbers]
    assert labels[:2] == ["Right lung", "Left lung"]
    refs = {uid[2] for uid in seg.get_source_image_uids()}
    assert refs == {src.SOPInstanceUID}
    algo = seg.get_segment_description(1).algorithm_identification
    assert algo[0].AlgorithmName == "xrayviewer" and algo[0].AlgorithmFamilyCodeSequence[0].CodeValue


def test_c_move_to_an_ae_the_pacs_does_not_know(orthanc: Orthanc, tmp_path: Path, dicom_dir: Path) -> None:
    film = dicom_dir / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    client = PacsClient(orthanc.node)
    assert client.send([film])[0].ok
    uid = str(pydicom.dcmread(film, stop_before_pixels=True).StudyInstanceUID)
    stranger = PacsClient(orthanc.node, calling_ae="STRANGER")
    with pytest.raises(PacsError, match="STRANGER") as err:
        stranger.retrieve(uid, tmp_path, method="move", move_port=free_port())
    assert uid in str(err.value) and str(orthanc.node) in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_not_a_chest_study_is_named_with_node_study_and_file(orthanc: Orthanc, tmp_path: Path,
                                                              dicom_dir: Path) -> None:
    ct = dicom_dir / "non_cxr" / "CT_small.dcm"
    client = PacsClient(orthanc.node)
    assert client.send([ct])[0].ok
    uid = str(pydicom.dcmread(ct, stop_before_pixels=True).StudyInstanceUID)
    got = client.retrieve(uid, tmp_path)
    msg = not_chest_message(orthanc.node, got)
    assert msg and str(orthanc.node) in msg and uid in msg and got.files[0].name in msg and "CT" in msg


def test_unknown_study_leaves_nothing_behind(orthanc: Orthanc, tmp_path: Path) -> None:
    with pytest.raises(PacsError) as err:
        PacsClient(orthanc.node).retrieve("1.2.3.4.5.6.7.8.9", tmp_path)
    assert "1.2.3.4.5.6.7.8.9" in str(err.value) and str(orthanc.node) in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_rejected_association_names_the_node(orthanc: Orthanc, tmp_path: Path, dicom_dir: Path) -> None:
    wrong = PacsNode("NOT-ORTHANC", "127.0.0.1", orthanc.dicom_port)
    with pytest.raises(PacsError, match="rejected the association") as err:
        PacsClient(wrong).find_studies(patient_id="x")
    assert "NOT-ORTHANC@127.0.0.1" in str(err.value)
    results = PacsClient(wrong).send([dicom_dir / "dx_image.dcm"])
    assert [r.status for r in results] == ["failed"] and "rejected" in results[0].message


def test_unreachable_node_every_file_gets_a_failed_row(tmp_path: Path, dicom_dir: Path, isolated: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()  # nothing listens there
    node = PacsNode("NOBODY", "127.0.0.1", port)
    with pytest.raises(PacsError, match=rf"NOBODY@127.0.0.1:{port}.*after 2 attempt"):
        PacsClient(node, retries=1, retry_wait=0.01, timeout=3).echo()
    (tmp_path / "junk.sc.dcm").write_bytes(b"not dicom")
    files = [dicom_dir / "dx_image.dcm", tmp_path / "junk.sc.dcm"]
    rc = main(["send", *map(str, files), "--to", f"NOBODY@127.0.0.1:{port}", "--retries", "0"])
    out = capsys.readouterr()
    assert rc == 1
    assert "dx_image.dcm" in out.out and "junk.sc.dcm" in out.out and "0 sent, 2 failed" in out.out
    assert "not a readable DICOM file" in out.out and f"NOBODY@127.0.0.1:{port}" in out.out


def test_failed_c_store_is_reported_per_file(tmp_path: Path, dicom_dir: Path) -> None:
    """pynetdicom's own SCP, answering 'out of resources' for one file and success for another."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    refused = str(pydicom.dcmread(dicom_dir / "dx_image.dcm", stop_before_pixels=True).SOPInstanceUID)

    def handle(event):
        return 0xA700 if str(event.request.AffectedSOPInstanceUID) == refused else 0x0000

    scp = AE(ae_title="TESTSCP")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        ok_file = dicom_dir / "non_cxr" / "MR_small.dcm"
        results = PacsClient(PacsNode("TESTSCP", "127.0.0.1", port)).send([dicom_dir / "dx_image.dcm", ok_file])
    finally:
        server.shutdown()
    assert [r.status for r in results] == ["failed", "sent"]
    assert "0xA700" in results[0].message and "TESTSCP@127.0.0.1" in results[0].message


def test_nodes_are_kept_in_the_settings_folder(isolated: Path) -> None:
    node = PacsNode.parse("ORTHANC@127.0.0.1:4242", name="lab")
    save_nodes([node])
    assert load_nodes() == [node] and (isolated / "config" / "pacs_nodes.json").is_file()
    with pytest.raises(PacsError, match="AET@HOST:PORT"):
        PacsNode.parse("orthanc:4242")
    assert main(["send", str(isolated), "--to", "nonsense"]) == 2


def test_collect_outputs_takes_seg_and_sc_from_folders(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    for name in ("x.seg.dcm", "x.sc.dcm", "x.overlay.png", "film.dcm"):
        (tmp_path / "a" / name).write_bytes(b"")
    files, empty = collect_outputs([tmp_path / "a", tmp_path / "a" / "film.dcm"])
    assert [f.name for f in files] == ["x.sc.dcm", "x.seg.dcm", "film.dcm"] and empty == []
    (tmp_path / "b").mkdir()
    assert collect_outputs([tmp_path / "b"])[1]


def test_names_from_pacs_uids_stay_inside_the_folder() -> None:
    from xrayviewer.pacs import _safe_name

    assert _safe_name("..") == "unknown" and _safe_name("../../etc") == "_.._etc"
    assert _safe_name("1.2.840.113619") == "1.2.840.113619" and "/" not in _safe_name("a/b")


def test_tls_send_and_a_certificate_the_node_cannot_prove(tmp_path: Path, dicom_dir: Path) -> None:
    """DICOM over TLS against pynetdicom's own SCP with a throwaway certificate for 127.0.0.1."""
    import ssl

    from pynetdicom import AE, AllStoragePresentationContexts, evt

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not installed: no certificate for the TLS test")
    for name in ("good", "other"):
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                        str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem")],
                       check=True, capture_output=True, timeout=60)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "good.pem", tmp_path / "good.key")
    stored = []
    scp = AE(ae_title="TLSSCP")
    scp.supported_contexts = AllStoragePresentationContexts
    scp.add_supported_context("1.2.840.10008.1.1")
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, ssl_context=server_ctx,
                              evt_handlers=[(evt.EVT_C_STORE, lambda e: stored.append(e.request) or 0x0000)])
    try:
        good = PacsNode("TLSSCP", "127.0.0.1", port, tls=True, tls_ca=str(tmp_path / "good.pem"))
        PacsClient(good, retries=0).echo()
        assert [r.status for r in PacsClient(good).send([dicom_dir / "dx_image.dcm"])] == ["sent"] and stored
        wrong = PacsNode("TLSSCP", "127.0.0.1", port, tls=True, tls_ca=str(tmp_path / "other.pem"))
        with pytest.raises(PacsError, match="TLSSCP@127.0.0.1.*certificate"):
            PacsClient(wrong, retries=0, timeout=5).echo()
    finally:
        server.shutdown()
