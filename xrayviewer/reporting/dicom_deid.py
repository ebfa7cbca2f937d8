"""De-identification of our DICOM outputs by PS3.15 Table E.1-1 (Basic Application Level
Confidentiality Profile), applied to every attribute of the finished SEG / Secondary Capture.

**The table** is not ours: it is the machine-readable copy of Table E.1-1 that
dicom-anonymizer (KitwareMedical) generates from the standard's own XML
(:data:`TABLE_EDITION`, ~650 rows with their actions D, Z, X, U, Z/D, X/Z, X/D, X/Z/D,
X/Z/U*, including the repeating groups of curves and overlays). We use its data and apply
the actions ourselves, because its engine resolves every compound action to the most
retaining branch (X/Z always Z, X/D always D: "ANONYMIZED" left in attributes that should
be removed), writes ``00010101`` into dates that Z or X should empty or remove, acts only on
top-level attributes (UIDs nested in reference sequences are not replaced) and maps UIDs to
random values that differ between processes. Here:

- every data element, nested ones included, is looked up in the table;
- compound actions are resolved "to maintain IOD conformance" from the attribute's type in
  the output's IOD (the module tables highdicom ships with the standard): Type 1 gives D,
  Type 2 gives Z, otherwise X; X/Z/U* (the two image-reference sequences) keeps the
  sequence with its UIDs replaced, as the Common Instance Reference module needs it;
- U replaces each UID with ``2.25.<keyed hash>``: one UID always gives the same replacement
  on this installation (so SEG, SC and later runs agree on the study and the source image
  they reference) and no one without the installation's key (:func:`deid_key`, a random
  secret in the settings folder) can recompute it from the original;
- Z empties the value, except Patient's Name ("ANONYMOUS^") and Patient ID (a keyed
  pseudonym ``XRV-...``, the same for all outputs of one patient on this installation), so a
  PACS shows de-identified results as anonymous and keeps one patient's results together;
- private attributes are removed;
- Patient Identity Removed = YES (NO for a Secondary Capture whose source says Burned In
  Annotation = YES: its pixels may show the patient's name), De-identification Method and its
  Code Sequence name the profile and every option applied.

**Option applied**: Clean Descriptors (113105), for the descriptions xrayviewer itself writes
(:data:`OWN_DESCRIPTORS`: the Secondary Capture's series description and comments, the
contributing-equipment descriptions); they hold no patient data by construction. Every
descriptor copied from the source (Study Description and the like) is removed (X), the most
thorough cleaning. No other option (no retained dates, patient characteristics, device or
institution identity, UIDs or private attributes).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pkgutil
import secrets
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import Any

TABLE_EDITION = "dicomfields_2026c"  # DICOM 2026c, as packaged by dicom-anonymizer >= 2.1
BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_DESCRIPTORS = ("113105", "Clean Descriptors Option")
# Descriptors that only xrayviewer (or highdicom on its behalf) writes into our outputs;
# kept under the Clean Descriptors option. Paths are the sequence keywords above the attribute.
OWN_DESCRIPTORS = {
    ((), "SeriesDescription"),
    ((), "ImageComments"),
    (("ContributingEquipmentSequence",), "ContributionDescription"),
}
DUMMY_NAME = "ANONYMOUS^"
DUMMY_TEXT = "ANONYMIZED"
DUMMY_BY_VR = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y", "UR": "urn:anonymized",
               "DS": "0", "IS": "0"}
KEY_FILE = "deid.key"


class DeidError(Exception):
    """The de-identification table or the IOD tables could not be loaded."""


# ---- the table -------------------------------------------------------------------------
_CATEGORY_ACTION = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z/D", "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D", "X_Z_D_TAGS": "X/Z/D", "X_Z_U_STAR_TAGS": "X/Z/U*",
}


@lru_cache(1)
def table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """Table E.1-1 as ({tag: action}, ((group, element, group mask, element mask, action), ...))."""
    try:
        from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector

        db = dicom_anonymization_database_selector(TABLE_EDITION)
    except (ImportError, ValueError, AttributeError) as exc:
        raise DeidError(f"PS3.15 Table E.1-1 ({TABLE_EDITION}) unavailable: install dicom-anonymizer>=2.1 "
                        f"({exc})") from exc
    single: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTION.items():
        for tag in db[category]:
            if len(tag) == 2:
                single[(tag[0] << 16) | tag[1]] = action
            else:
                masked.append((tag[0], tag[1], tag[2], tag[3], action))
    return single, tuple(masked)


def action_for(tag: int) -> str | None:
    """The table's action for a tag (repeating groups such as overlays included), or None."""
    single, masked = table()
    found = single.get(int(tag))
    if found:
        return found
    group, element = int(tag) >> 16, int(tag) & 0xFFFF
    for g, e, gm, em, action in masked:
        if group & gm == g & gm and element & em == e & em:
            return action
    return None


# ---- attribute types from the standard's IOD tables (shipped with highdicom) --------------
def _load_json(name: str) -> Any:
    data = pkgutil.get_data("highdicom", f"_standard/{name}")
    if data is None:
        raise FileNotFoundError(name)
    return json.loads(data.decode("utf-8"))


@lru_cache(8)
def _iod_types(sop_class_uid: str) -> dict[tuple[tuple[str, ...], str], str]:
    try:
        sop_iod = _load_json("sop_class_iod_map.json")
        iod_modules = _load_json("iod_module_map.json")
        module_attrs = _load_json("module_attribute_map.json")
    except (OSError, ValueError) as exc:
        raise DeidError(f"the standard's IOD tables (highdicom) could not be read ({exc})") from exc
    rank = {"1": 0, "1C": 1, "2": 2, "2C": 3, "3": 4}
    types: dict[tuple[tuple[str, ...], str], str] = {}
    for module in iod_modules.get(sop_iod.get(sop_class_uid, ""), []):
        for attr in module_attrs.get(module["key"], []):
            key = (tuple(attr["path"]), attr["keyword"])
            old = types.get(key)
            if old is None or rank.get(attr["type"], 9) < rank.get(old, 9):
                types[key] = attr["type"]
    return types


def attribute_type(sop_class_uid: str, path: Iterable[str], keyword: str) -> str | None:
    """Type ('1', '1C', '2', '2C', '3') of an attribute at ``path`` in the IOD, or None if not in it."""
    return _iod_types(str(sop_class_uid)).get((tuple(path), keyword))


def resolve(action: str, attr_type: str | None) -> str:
    """A compound action resolved by the attribute's type (PS3.15 E.1.1, the notes to Table E.1-1)."""
    required = attr_type in ("1", "1C")
    type2 = attr_type in ("2", "2C")
    if action == "Z/D":
        return "D" if required else "Z"
    if action == "X/Z":
        return "Z" if (required or type2) else "X"
    if action == "X/D":
        return "D" if (required or type2) else "X"
    if action == "X/Z/D":
        return "D" if required else "Z" if type2 else "X"
    if action == "X/Z/U*":
        # Source Image / Referenced Image Sequence: kept with their UIDs replaced. The instance
        # lists the same references in its Common Instance Reference module, which is only
        # conformant (dciodvfy) while a top-level sequence references them.
        return "U*"
    return action


# ---- keyed replacements --------------------------------------------------------------------
def deid_key(config_dir: Path | None = None) -> bytes:
    """This installation's secret for UID and patient pseudonyms (created on first use, mode 0600)."""
    if config_dir is None:
        from ..settings import config_dir as _config_dir

        config_dir = _config_dir()
    path = Path(config_dir) / KEY_FILE
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    except ValueError as exc:
        raise DeidError(f"{path}: the de-identification key is damaged ({exc}); move it aside to make a new one "
                        "(outputs made with the old key will no longer share UIDs with new ones)") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32))
        fh.flush()
        os.fsync(fh.fileno())
    return bytes.fromhex(path.read_text(encoding="ascii").strip())


def remap_uid(uid: str, key: bytes) -> str:
    """A UID's replacement: ``2.25.`` and 128 bits of HMAC-SHA256 (at most 44 characters)."""
    digest = hmac.new(key, b"uid:" + str(uid).strip().encode("ascii", "replace"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def pseudonym(patient_id: str, patient_name: str, key: bytes) -> str:
    """Patient ID's replacement: ``XRV-`` and 12 hex digits of HMAC-SHA256 of the ID (of the name
    when the ID is empty)."""
    who = f"id:{patient_id.strip()}" if patient_id.strip() else f"name:{patient_name.strip()}"
    digest = hmac.new(key, who.encode(), hashlib.sha256).hexdigest()
    return "XRV-" + digest[:12]


# ---- the walk --------------------------------------------------------------------------
def _dummy(elem: Any) -> Any:
    vr = elem.VR
    if vr in DUMMY_BY_VR:
        return DUMMY_BY_VR[vr]
    if vr in ("AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT"):
        return DUMMY_TEXT
    if vr == "PN":
        return DUMMY_NAME
    if vr in ("FD", "FL", "SS", "US", "SL", "UL", "SV", "UV"):
        return 0
    if vr in ("OB", "OW", "UN"):
        return b"\x00\x00"
    return DUMMY_TEXT


def _is_own_descriptor(path: tuple[str, ...], keyword: str) -> bool:
    return (path, keyword) in OWN_DESCRIPTORS


def _apply(ds: Any, sop_class_uid: str, key: bytes, patient: str, path: tuple[str, ...], log: list[str],
           seen: set[int]) -> None:
    if id(ds) in seen:  # highdicom shares one item between frames: replace its UIDs once
        return
    seen.add(id(ds))
    for elem in list(ds):
        tag = int(elem.tag)
        keyword = elem.keyword or str(elem.tag)
        if elem.tag.is_private:
            del ds[elem.tag]
            log.append(f"{'.'.join(path + (keyword,))}: X (private)")
            continue
        action = action_for(tag)
        if action is not None and _is_own_descriptor(path, keyword):
            action = "K"  # Clean Descriptors option: text xrayviewer wrote, no patient data
        if action is not None:
            action = resolve(action, attribute_type(sop_class_uid, path, keyword))
        if action == "X":
            del ds[elem.tag]
        elif action == "Z":
            if elem.VR == "SQ":
                elem.value = []
            elif keyword == "PatientName":
                elem.value = DUMMY_NAME
            elif keyword == "PatientID":
                elem.value = patient
            else:
                elem.value = b"" if elem.VR in ("OB", "OW", "UN") else ""
        elif action == "D":
            if elem.VR == "SQ":
                elem.value = []  # D on a sequence (e.g. Content Sequence): no content of the source kept
            elif elem.VR == "UI":
                elem.value = remap_uid(str(elem.value), key)
            elif keyword == "PatientID":
                elem.value = patient
            elif elem.VM > 1 and elem.VR not in ("OB", "OW", "UN"):
                elem.value = [_dummy(elem)] * elem.VM
            else:
                elem.value = _dummy(elem)
        elif action == "U" and elem.VR == "UI" and elem.value:
            if elem.VM > 1:
                elem.value = [remap_uid(str(v), key) for v in elem.value]
            else:
                elem.value = remap_uid(str(elem.value), key)
        if action is not None and action != "K":
            log.append(f"{'.'.join(path + (keyword,))}: {action}")
        if elem.tag in ds and elem.VR == "SQ" and elem.value:
            for item in elem.value:
                _apply(item, sop_class_uid, key, patient, path + (keyword,), log, seen)


def deidentify_output(ds: Any, *, key: bytes | None = None, source_burned_in: bool = False) -> list[str]:
    """De-identify a finished output instance in place by Table E.1-1; returns the actions taken.

    ``source_burned_in``: the source said Burned In Annotation = YES and ``ds`` carries its
    pixels (Secondary Capture): Patient Identity Removed is then NO.
    """
    from pydicom.dataset import Dataset

    key = deid_key() if key is None else key
    sop_class = str(ds.SOPClassUID)
    log: list[str] = []
    patient = pseudonym(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""), key)
    _apply(ds, sop_class, key, patient, (), log, set())
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "NO" if source_burned_in else "YES"
    ds.DeidentificationMethod = describe()
    items = []
    for value, meaning in (BASIC_PROFILE, CLEAN_DESCRIPTORS):
        code = Dataset()
        code.CodeValue = value
        code.CodingSchemeDesignator = "DCM"
        code.CodeMeaning = meaning
        items.append(code)
    ds.DeidentificationMethodCodeSequence = items
    return log


def describe() -> str:
    """De-identification Method (LO, at most 64 characters)."""
    return f"PS3.15 E.1-1 {TABLE_EDITION[-5:]} Basic+CleanDesc; xrayviewer"
