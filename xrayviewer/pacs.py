"""Talking to a PACS (pynetdicom): send results (C-STORE), find studies (C-FIND), and fetch a
study (C-GET, or C-MOVE to a storage SCP we run for the transfer).

Every failure is a :class:`PacsError` whose message names the node, and the study or file
it concerns: an unreachable node, a rejected or aborted association, a failed C-STORE, a
C-GET or C-MOVE with failed sub-operations. Nothing is half-written: a retrieved study lands
in a temporary folder beside its destination and is renamed into place only when every
instance arrived; on failure the partial folder is removed. Sending reports one status per
file; nothing is silently dropped (a file that cannot be read or sent gets its own failed row).

PACS nodes (``AET@HOST:PORT``, optionally TLS) are kept in ``pacs_nodes.json`` in the
settings folder (:func:`load_nodes`, :func:`save_nodes`); a node can also be given inline.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import ssl
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import XRayViewerError
from .fsutil import atomic_write_bytes, atomic_write_text
from .provenance import OUTPUT_SUFFIXES

log = logging.getLogger(__name__)

DEFAULT_CALLING_AE = "XRAYVIEWER"
NODES_FILE = "pacs_nodes.json"
_NODE_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
# What "Open from PACS" accepts into the viewer (C-GET needs a storage context per SOP class).
RETRIEVE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.1",      # Computed Radiography
    "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray for processing
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.66.4",   # Segmentation (our own results, sent back earlier)
    "1.2.840.10008.5.1.4.1.1.2",      # CT (accepted, then reported as not a chest film)
    "1.2.840.10008.5.1.4.1.1.4",      # MR (idem)
)
CHEST_RADIOGRAPH_CLASSES = RETRIEVE_SOP_CLASSES[:4]
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
)
# C-STORE status codes (PS3.4 Annex B) that mean stored, with or without a warning.
STORE_WARNINGS = {0xB000: "coercion of data elements", 0xB007: "data set does not match SOP class",
                  0xB006: "elements discarded"}


class PacsError(XRayViewerError):
    """A network operation with a PACS failed; the message names the node and what failed."""


@dataclass(frozen=True)
class PacsNode:
    """A DICOM node: called AE title, host, port; TLS with optional CA and client certificate."""

    ae_title: str
    host: str
    port: int
    name: str = ""
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> PacsNode:
        m = _NODE_RE.match(spec.strip())
        if not m:
            raise PacsError(f"'{spec}' is not a DICOM node: write AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        port = int(m["port"])
        if not 0 < port < 65536:
            raise PacsError(f"'{spec}': port {port} is out of range")
        return cls(m["aet"], m["host"].strip("[]"), port, **kw)

    def __str__(self) -> str:
        label = f"{self.ae_title}@{self.host}:{self.port}"
        return f"{self.name} ({label})" if self.name else label

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.tls_ca or None)
        if self.tls_cert:
            ctx.load_cert_chain(self.tls_cert, self.tls_key or None)
        return ctx


# ---- nodes kept in the settings folder --------------------------------------------------
def _nodes_path(config_dir: Path | None) -> Path:
    if config_dir is None:
        from .settings import config_dir as _config_dir

        config_dir = _config_dir()
    return Path(config_dir) / NODES_FILE


def load_nodes(config_dir: Path | None = None) -> list[PacsNode]:
    path = _nodes_path(config_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [PacsNode(**{k: v for k, v in item.items() if k in PacsNode.__dataclass_fields__}) for item in raw]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise PacsError(f"the PACS node list is unreadable ({exc})", path) from exc


def save_nodes(nodes: Sequence[PacsNode], config_dir: Path | None = None) -> Path:
    return atomic_write_text(_nodes_path(config_dir), json.dumps([asdict(n) for n in nodes], indent=2))


def resolve_node(spec: str, config_dir: Path | None = None, **kw: Any) -> PacsNode:
    """A saved node by name, else ``AET@HOST:PORT``."""
    for node in load_nodes(config_dir):
        if node.name and node.name == spec:
            return node
    return PacsNode.parse(spec, **kw)


# ---- results -----------------------------------------------------------------------------
@dataclass
class SendResult:
    path: str
    ok: bool
    status: str  # 'sent', 'sent with warning', 'failed'
    message: str = ""
    sop_instance_uid: str = ""


@dataclass
class StudyMatch:
    study_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: str = ""
    study_time: str = ""
    description: str = ""
    accession_number: str = ""
    modalities: tuple[str, ...] = ()
    instances: int | None = None
    body_parts: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class Retrieved:
    study_uid: str
    folder: Path
    files: list[Path]
    chest_films: list[Path]


def collect_outputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[str]]:
    """Files to send: files as given; from folders, our SEG and SC outputs (recursively).

    Returns the files and a note per folder that held none.
    """
    files: list[Path] = []
    empty: list[str] = []
    suffixes = (OUTPUT_SUFFIXES["seg"], OUTPUT_SUFFIXES["sc"])
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.name.endswith(suffixes))
            if not found:
                empty.append(f"{p}: no SEG or Secondary Capture (*.seg.dcm, *.sc.dcm) in this folder")
            files += found
        else:
            files.append(p)
    return files, empty


class PacsClient:
    """Operations against one node; each opens its own association (retried on failure)."""

    def __init__(self, node: PacsNode, *, calling_ae: str = DEFAULT_CALLING_AE, timeout: float = 30.0,
                 retries: int = 2, retry_wait: float = 1.0) -> None:
        self.node = node
        self.calling_ae = calling_ae
        self.timeout = timeout
        self.retries = max(0, retries)
        self.retry_wait = retry_wait

    # -- association ------------------------------------------------------------------
    def _ae(self) -> Any:
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        return ae

    def _associate(self, ae: Any, what: str, **kw: Any) -> Any:
        tls = self.node.ssl_context()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_wait * attempt)
            try:
                assoc = ae.associate(self.node.host, self.node.port, ae_title=self.node.ae_title,
                                     tls_args=(tls, self.node.host) if tls else None, **kw)
            except (OSError, ValueError, ssl.SSLError) as exc:
                last = f"cannot connect ({exc})"
                continue
            if assoc.is_established:
                return assoc
            if assoc.is_rejected:
                # A rejection is an answer, not a network glitch: retrying will not change it.
                raise PacsError(f"{self.node} rejected the association for {what} (check the called AE title "
                                f"'{self.node.ae_title}' and that the PACS knows the calling AE '{self.calling_ae}')")
            last = "association aborted" if assoc.is_aborted else "no answer (unreachable, or not a DICOM node)"
            if tls is not None:
                last = self._tls_problem(tls) or last
        raise PacsError(f"{self.node}: {last} for {what}, after {self.retries + 1} attempt(s)")

    def _tls_problem(self, ctx: ssl.SSLContext) -> str | None:
        """Why a TLS handshake with the node fails (pynetdicom only logs it), or None."""
        import socket

        try:
            with socket.create_connection((self.node.host, self.node.port), timeout=self.timeout) as raw, \
                    ctx.wrap_socket(raw, server_hostname=self.node.host):
                return None
        except ssl.SSLCertVerificationError as exc:
            return f"TLS: the node's certificate could not be verified ({exc.verify_message})"
        except (ssl.SSLError, OSError) as exc:
            return f"TLS handshake failed ({exc})"

    def echo(self) -> None:
        """C-ECHO: raises :class:`PacsError` unless the node answers."""
        ae = self._ae()
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = self._associate(ae, "C-ECHO")
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0:
            raise PacsError(f"{self.node} did not confirm C-ECHO")

    # -- C-STORE ----------------------------------------------------------------------
    def send(self, paths: Sequence[str | Path],
             on_result: Callable[[SendResult], None] | None = None) -> list[SendResult]:
        """C-STORE each file; one result per path, in order."""
        from pydicom import dcmread
        from pydicom.errors import InvalidDicomError

        results: dict[int, SendResult] = {}

        def done(i: int, result: SendResult) -> None:
            results[i] = result
            if on_result:
                on_result(result)

        pending: list[tuple[int, Path, Any]] = []
        for i, p in enumerate(map(Path, paths)):
            try:
                ds = dcmread(p)
                item = (ds, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID))
            except (OSError, InvalidDicomError, AttributeError, KeyError, ValueError) as exc:
                done(i, SendResult(str(p), False, "failed", f"not a readable DICOM file ({exc})"))
                continue
            pending.append((i, p, item))
        attempts = 0
        while pending:
            attempts += 1
            ae = self._ae()
            for sop_class, syntax in sorted({(c, s) for _i, _p, (_d, c, _u, s) in pending}):
                ae.add_requested_context(sop_class, [syntax])
            try:
                assoc = self._associate(ae, f"sending {len(pending)} file(s)")
            except PacsError as exc:
                for i, p, (_ds, _c, uid, _s) in pending:
                    done(i, SendResult(str(p), False, "failed", exc.message, uid))
                break
            retry: list[tuple[int, Path, Any]] = []
            try:
                for i, p, item in pending:
                    ds, _sop_class, uid, _syntax = item
                    if not assoc.is_established:
                        retry.append((i, p, item))
                        continue
                    status = assoc.send_c_store(ds)
                    code = getattr(status, "Status", None) if status else None
                    if code is None:  # no response: the association died under us
                        retry.append((i, p, item))
                    elif code == 0:
                        done(i, SendResult(str(p), True, "sent", "", uid))
                    elif code in STORE_WARNINGS:
                        done(i, SendResult(str(p), True, "sent with warning",
                                           f"0x{code:04X} {STORE_WARNINGS[code]}", uid))
                    else:
                        done(i, SendResult(str(p), False, "failed",
                                           f"{self.node} refused it: C-STORE status 0x{code:04X}", uid))
            finally:
                if assoc.is_established:
                    assoc.release()
            if retry and attempts > self.retries:
                for i, p, (_ds, _c, uid, _s) in retry:
                    done(i, SendResult(str(p), False, "failed",
                                       f"{self.node}: no C-STORE response after {attempts} association(s)", uid))
                break
            pending = retry
            if pending:
                time.sleep(self.retry_wait * attempts)
        return [results[i] for i in sorted(results)]

    # -- C-FIND -----------------------------------------------------------------------
    def find_studies(self, *, patient_id: str = "", patient_name: str = "", study_date: str = "",
                     accession_number: str = "", study_uid: str = "") -> list[StudyMatch]:
        """Study-level C-FIND (Study Root); ``study_date`` as YYYYMMDD or a range YYYYMMDD-YYYYMMDD."""
        from pydicom.dataset import Dataset

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = patient_id
        q.PatientName = patient_name
        q.StudyDate = study_date
        q.AccessionNumber = accession_number
        q.StudyInstanceUID = study_uid
        for kw in ("StudyTime", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"):
            setattr(q, kw, "")
        model = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R Information Model - FIND
        ae = self._ae()
        ae.add_requested_context(model)
        what = "C-FIND " + ", ".join(f"{k}={v}" for k, v in (("patient", patient_id or patient_name),
                                                               ("date", study_date), ("accession", accession_number),
                                                               ("study", study_uid)) if v)
        assoc = self._associate(ae, what)
        matches: list[StudyMatch] = []
        try:
            for status, ident in assoc.send_c_find(q, model):
                code = getattr(status, "Status", None) if status else None
                if code is None:
                    raise PacsError(f"{self.node}: the association ended during {what}")
                if code in (0xFF00, 0xFF01) and ident is not None:
                    raw = ident.get("ModalitiesInStudy", "") or ""
                    mods = tuple(str(m) for m in ([raw] if isinstance(raw, str) else list(raw)) if str(m))
                    n = ident.get("NumberOfStudyRelatedInstances", "")
                    matches.append(StudyMatch(
                        str(ident.get("StudyInstanceUID", "")), str(ident.get("PatientID", "")),
                        str(ident.get("PatientName", "")), str(ident.get("StudyDate", "")),
                        str(ident.get("StudyTime", "")), str(ident.get("StudyDescription", "")),
                        str(ident.get("AccessionNumber", "")), mods, int(n) if str(n).strip() else None))
                elif code != 0:
                    raise PacsError(f"{self.node}: {what} failed (status 0x{code:04X})")
        finally:
            if assoc.is_established:
                assoc.release()
        return sorted(matches, key=lambda m: (m.study_date, m.study_time), reverse=True)

    # -- C-GET / C-MOVE ---------------------------------------------------------------
    def retrieve(self, study_uid: str, dest: str | Path, *, method: str = "get", move_port: int = 0,
                 move_host: str = "127.0.0.1") -> Retrieved:
        """Fetch a whole study into ``dest/<study_uid>/`` (all or nothing).

        ``method='move'`` runs a storage SCP on ``move_host:move_port`` for the transfer; the
        PACS must know our calling AE title at that address.
        """
        from pydicom.dataset import Dataset

        if method not in ("get", "move"):
            raise PacsError(f"unknown retrieve method '{method}' (get or move)")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        final = dest / _safe_name(study_uid)
        partial = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=dest))
        received: list[Path] = []
        failures: list[str] = []
        lock = threading.Lock()

        def on_store(event: Any) -> int:
            try:
                ds = event.dataset
                ds.file_meta = event.file_meta
                uid = str(ds.SOPInstanceUID)
                target = partial / f"{_safe_name(uid)}.dcm"
                from io import BytesIO

                buf = BytesIO()
                ds.save_as(buf, enforce_file_format=True)
                atomic_write_bytes(target, buf.getvalue())
                with lock:
                    received.append(target)
                return 0x0000
            except Exception as exc:  # noqa: BLE001 - the PACS gets a failure status and the run reports it
                with lock:
                    failures.append(f"instance {getattr(event.request, 'AffectedSOPInstanceUID', '?')}: {exc}")
                return 0xA700

        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = study_uid
        what = f"retrieving study {study_uid}"
        try:
            if method == "get":
                self._get(q, on_store, what)
            else:
                self._move(q, on_store, what, move_host, move_port)
            if failures:
                raise PacsError(f"{self.node}: {what}: {len(failures)} instance(s) could not be stored here: "
                                + "; ".join(failures[:3]))
            if not received:
                raise PacsError(f"{self.node}: {what}: the PACS sent no instances (unknown study, or none we "
                                "can store)")
            if final.exists():
                shutil.rmtree(final)
            partial.replace(final)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        files = sorted(final / p.name for p in received)
        chest = [f for f in files if _is_chest_film(f)]
        return Retrieved(study_uid, final, files, chest)

    def _get(self, q: Any, on_store: Callable[[Any], int], what: str) -> None:
        from pynetdicom import build_role, evt

        model = "1.2.840.10008.5.1.4.1.2.2.3"  # Study Root Q/R - GET
        ae = self._ae()
        ae.add_requested_context(model)
        roles = []
        for sop in RETRIEVE_SOP_CLASSES:
            # One context per transfer syntax: the PACS accepts one syntax per context and
            # sends each instance in its stored syntax only if a context offers that one
            # (Orthanc does not transcode JPEG 2000 to little endian for C-GET). 7 x 11 + 1 < 128.
            for syntax in TRANSFER_SYNTAXES:
                ae.add_requested_context(sop, [syntax])
            roles.append(build_role(sop, scp_role=True))
        assoc = self._associate(ae, what, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            self._check_retrieve_responses(assoc.send_c_get(q, model), what)
        finally:
            if assoc.is_established:
                assoc.release()

    def _move(self, q: Any, on_store: Callable[[Any], int], what: str, host: str, port: int) -> None:
        from pynetdicom import evt

        model = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Q/R - MOVE
        scp = self._ae()
        for sop in RETRIEVE_SOP_CLASSES:
            scp.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        try:
            server = scp.start_server((host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        except OSError as exc:
            raise PacsError(f"cannot listen on {host}:{port} for C-MOVE ({exc})") from exc
        try:
            ae = self._ae()
            ae.add_requested_context(model)
            assoc = self._associate(ae, what)
            try:
                hint = (f" (C-MOVE: the PACS must know our AE title '{self.calling_ae}' at this machine's address, "
                        f"port {port})")
                self._check_retrieve_responses(assoc.send_c_move(q, self.calling_ae, model), what, hint)
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            server.shutdown()

    def _check_retrieve_responses(self, responses: Iterable[tuple[Any, Any]], what: str, hint: str = "") -> None:
        final = None
        for status, _ident in responses:
            if not status:
                raise PacsError(f"{self.node}: the association ended while {what}")
            final = status
        code = getattr(final, "Status", None)
        if code is None:
            raise PacsError(f"{self.node}: no answer while {what}")
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if code == 0xA801:
            raise PacsError(f"{self.node}: {what}: the PACS does not know our AE title '{self.calling_ae}' as a "
                            "C-MOVE destination")
        if code not in (0x0000, 0xFF00) or failed:
            raise PacsError(f"{self.node}: {what} failed (status 0x{code:04X}, {failed} failed sub-operation(s))"
                            + hint)


def _safe_name(uid: str) -> str:
    """A file or folder name from a UID a PACS sent: letters, digits and inner dots only (never
    '..', a separator or a hidden name)."""
    return re.sub(r"[^0-9A-Za-z.]", "_", uid)[:128].strip(".") or "unknown"


def _is_chest_film(path: Path) -> bool:
    """A radiograph (CR/DX/SC) not said to be another body part; our own results are not films."""
    from pydicom import dcmread

    try:
        ds = dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not a film to open
        return False
    if str(ds.get("SOPClassUID", "")) not in CHEST_RADIOGRAPH_CLASSES:
        return False
    from .provenance import DICOM_MANUFACTURER

    if str(ds.get("Manufacturer", "")) == DICOM_MANUFACTURER:
        return False
    part = str(ds.get("BodyPartExamined", "") or "").upper()
    return part in ("", "CHEST", "THORAX", "LUNG", "CHEST_TO_PELVIS")


def not_chest_message(node: PacsNode, retrieved: Retrieved) -> str | None:
    """Why a retrieved study cannot be analysed, naming node, study and files; None if it can."""
    if retrieved.chest_films:
        return None
    from pydicom import dcmread

    kinds = []
    for f in retrieved.files[:5]:
        try:
            ds = dcmread(f, stop_before_pixels=True)
            kinds.append(f"{f.name}: {ds.get('Modality', '?')} {ds.get('BodyPartExamined', '') or ''}".strip())
        except Exception:  # noqa: BLE001 - named as unreadable in the message
            kinds.append(f"{f.name}: unreadable")
    return (f"{node}: study {retrieved.study_uid} holds no chest radiograph ({'; '.join(kinds)}"
            f"{'; ...' if len(retrieved.files) > 5 else ''})")
