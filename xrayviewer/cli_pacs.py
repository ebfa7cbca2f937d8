"""``xrayviewer send``, ``query`` and ``retrieve``: the command line's PACS commands
(:mod:`xrayviewer.pacs`). Exit status: 0 all done, 1 something failed (each file or study
named), 2 usage error (e.g. a node that is not AET@HOST:PORT nor a saved name)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, TextIO

from .errors import XRayViewerError

log = logging.getLogger("xrayviewer")
PACS_COMMANDS = ("send", "query", "retrieve")


def _node_args(p: argparse.ArgumentParser, flag: str, what: str) -> None:
    p.add_argument(flag, dest="node", required=True, metavar="NODE",
                   help=f"{what}: AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242) or the name of a node saved in the viewer")
    p.add_argument("--calling-ae", default="XRAYVIEWER", help="our AE title (default XRAYVIEWER)")
    p.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default 30)")
    p.add_argument("--retries", type=int, default=2, help="new associations after a failed one (default 2)")
    p.add_argument("--tls", action="store_true", help="DICOM over TLS")
    p.add_argument("--tls-ca", default="", metavar="FILE", help="CA certificates to verify the node (PEM)")
    p.add_argument("--tls-cert", default="", metavar="FILE", help="our client certificate (PEM)")
    p.add_argument("--tls-key", default="", metavar="FILE", help="its private key (PEM)")


def add_commands(sub: Any, parents: list[argparse.ArgumentParser]) -> None:
    send = sub.add_parser("send", parents=parents, help="send SEG and SC results to a PACS (C-STORE)",
                          description="Send DICOM files to a PACS: files as given, and from folders every SEG "
                                      "(*.seg.dcm) and Secondary Capture (*.sc.dcm) that analyze wrote. One line "
                                      "per file; exit 1 if any failed.")
    send.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="DICOM files and/or analyze output folders")
    _node_args(send, "--to", "the PACS")
    send.set_defaults(func=cmd_send)

    query = sub.add_parser("query", parents=parents, help="find studies on a PACS (C-FIND)")
    _node_args(query, "--from", "the PACS")
    query.add_argument("--patient-id", default="")
    query.add_argument("--patient-name", default="", help="DICOM wildcards allowed (DOE^*)")
    query.add_argument("--study-date", default="", help="YYYYMMDD or YYYYMMDD-YYYYMMDD")
    query.add_argument("--accession", default="")
    query.add_argument("--json", action="store_true", help="one JSON object per study")
    query.add_argument("--phi", action="store_true", help="show patient name, ID and study date (off by default)")
    query.set_defaults(func=cmd_query)

    ret = sub.add_parser("retrieve", parents=parents, help="fetch a study from a PACS (C-GET or C-MOVE)")
    ret.add_argument("study_uid", metavar="STUDY_UID")
    _node_args(ret, "--from", "the PACS")
    ret.add_argument("--out", type=Path, default=Path("xrayviewer-pacs"),
                     help="folder; the study lands in OUT/<study UID>/ (default ./xrayviewer-pacs)")
    ret.add_argument("--move-port", type=int, default=0,
                     help="use C-MOVE to a storage SCP on this port instead of C-GET (the PACS must know our AE "
                          "title at this machine's address and port)")
    ret.set_defaults(func=cmd_retrieve)


def _client(args: argparse.Namespace) -> Any:
    from .pacs import PacsClient, resolve_node

    node = resolve_node(args.node, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key)
    return PacsClient(node, calling_ae=args.calling_ae, timeout=args.timeout, retries=args.retries)


def _usage(exc: XRayViewerError, out: TextIO) -> int:
    log.error("%s", exc)
    return 2


def cmd_send(args: argparse.Namespace, out: TextIO) -> int:
    from .pacs import PacsError, SendResult, collect_outputs

    try:
        client = _client(args)
    except PacsError as exc:
        return _usage(exc, out)
    files, empty = collect_outputs(args.paths)
    for note in empty:
        out.write(f"{note}\n")
    missing = [f for f in files if not f.is_file()]

    def show(r: SendResult) -> None:
        out.write(f"{r.path}: {r.status}{' (' + r.message + ')' if r.message else ''}\n")
        out.flush()

    results = [SendResult(str(f), False, "failed", "no such file") for f in missing]
    for r in results:
        show(r)
    present = [f for f in files if f.is_file()]
    if present:
        results += client.send(present, on_result=show)
    sent = sum(r.ok for r in results)
    failed = len(results) - sent
    out.write(f"{sent} sent, {failed} failed to {client.node}\n")
    return 1 if failed or empty or not results else 0


def cmd_query(args: argparse.Namespace, out: TextIO) -> int:
    from .pacs import PacsError

    try:
        client = _client(args)
    except PacsError as exc:
        return _usage(exc, out)
    if not (args.patient_id or args.patient_name or args.study_date or args.accession):
        log.error("give at least one of --patient-id, --patient-name, --study-date, --accession")
        return 2
    try:
        studies = client.find_studies(patient_id=args.patient_id, patient_name=args.patient_name,
                                      study_date=args.study_date, accession_number=args.accession)
    except PacsError as exc:
        log.error("%s", exc)
        return 1
    for s in studies:
        rec: dict[str, Any] = {"study_uid": s.study_uid, "modalities": list(s.modalities), "instances": s.instances,
                               "description": s.description if args.phi else ""}
        if args.phi:
            rec.update(patient_id=s.patient_id, patient_name=s.patient_name, study_date=s.study_date,
                       accession_number=s.accession_number)
        if args.json:
            out.write(json.dumps(rec) + "\n")
        else:
            extra = f"  {s.study_date}  {s.patient_id}  {s.patient_name}  {s.description}" if args.phi else ""
            out.write(f"{s.study_uid}  {'/'.join(s.modalities) or '?'}  {s.instances if s.instances is not None else '?'}"
                      f" instance(s){extra}\n")
    out.write(f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'} on {client.node}\n")
    return 0


def cmd_retrieve(args: argparse.Namespace, out: TextIO) -> int:
    from .pacs import PacsError, not_chest_message

    try:
        client = _client(args)
    except PacsError as exc:
        return _usage(exc, out)
    try:
        got = client.retrieve(args.study_uid, args.out, method="move" if args.move_port else "get",
                              move_port=args.move_port)
    except PacsError as exc:
        log.error("%s", exc)
        return 1
    out.write(f"{len(got.files)} instance(s) of study {got.study_uid} from {client.node} in {got.folder}\n")
    why = not_chest_message(client.node, got)
    if why:
        log.warning("%s", why)
    return 0
