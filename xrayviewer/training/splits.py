"""Deterministic, patient-disjoint, near-duplicate-aware train/val splits.

Rules (see DATA.md):
* COVID-QU-Ex has no patient ids: its own Train/Val folders decide.
* Other sources: records are grouped by patient id; a group goes to val when a seeded hash
  of its key falls below ``val_fraction`` (no RNG state, so adding a source never
  reshuffles another).
* Near-duplicates (fingerprint correlation > 0.98) across *all* sources are merged into the
  same group (union-find), so a picture can never sit in train and val at once. A group
  that contains a COVID-QU-Ex Val image goes to val; COVID-QU-Ex Train images in such a
  group are *excluded* (listed in the split file) rather than moved, keeping the dataset's
  own Val set intact.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .datasets import Record, fingerprint, read_gray

log = logging.getLogger(__name__)

NEAR_DUP_CORR = 0.98
SPLIT_VERSION = 1


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def compute_fingerprints(records: list[Record], workers: int = 2) -> np.ndarray:
    """(N, 1024) fingerprints; unreadable images get a zero vector (never a duplicate).

    A missing library (OpenCV) is not a bad file: it would leave every film unfingerprinted
    and silently write a different split (no near-duplicates removed), so it is raised."""
    def one(r: Record) -> np.ndarray:
        try:
            return fingerprint(read_gray(r.image))
        except ImportError:
            raise
        except Exception as exc:  # noqa: BLE001 - a bad file must not stop the split
            log.warning("cannot fingerprint %s: %s", r.image, exc)
            return np.zeros(1024, np.float32)

    with ThreadPoolExecutor(workers) as ex:
        return np.stack(list(ex.map(one, records))).astype(np.float32)


def near_duplicate_pairs(fp: np.ndarray, threshold: float = NEAR_DUP_CORR,
                         block: int = 2048) -> list[tuple[int, int]]:
    """All (i, j), i < j, with correlation > threshold (blockwise to bound memory)."""
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(fp), block):
        corr = fp[start:start + block] @ fp.T
        ii, jj = np.nonzero(corr > threshold)
        for i, j in zip(ii + start, jj):
            if i < j:
                pairs.append((int(i), int(j)))
    return pairs


def _hash_unit(seed: int, key: str) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def rel_key(record: Record, data_dir: Path) -> str:
    """Path relative to the data root: the identity used in split files."""
    try:
        return str(Path(record.image).resolve().relative_to(Path(data_dir).resolve()))
    except ValueError:
        return record.image


def make_split(records: list[Record], data_dir: Path, seed: int = 0,
               val_fraction: float = 0.2, fingerprints: np.ndarray | None = None) -> dict:
    """Build the split dictionary (see module docstring). Pure function of its inputs."""
    n = len(records)
    fp = compute_fingerprints(records) if fingerprints is None else fingerprints
    uf = _UnionFind(n)
    by_patient: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.patient_id is not None:
            # GeneralBlockchain images come from ieee8023: same patient-id namespace.
            ns = "ieee8023" if r.source in ("ieee8023", "generalblockchain") else r.source
            by_patient[(ns, r.patient_id)].append(i)
    for idx in by_patient.values():
        for j in idx[1:]:
            uf.union(idx[0], j)
    dup_pairs = near_duplicate_pairs(fp)
    for i, j in dup_pairs:
        uf.union(i, j)
    groups: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        groups[uf.find(i)].append(i)

    keys = [rel_key(r, data_dir) for r in records]
    assign: dict[str, str] = {}
    excluded: list[dict] = []
    for members in groups.values():
        qu = {records[i].folder_split for i in members if records[i].source == "covid-qu-ex"}
        if "Val" in qu:
            split = "val"
        elif "Train" in qu:
            split = "train"
        else:
            gkey = min(f"{records[i].source}:{records[i].patient_id or keys[i]}" for i in members)
            split = "val" if _hash_unit(seed, gkey) < val_fraction else "train"
        for i in members:
            r = records[i]
            if split == "val" and r.source == "covid-qu-ex" and r.folder_split == "Train":
                partners = [keys[k] for k in members if k != i]
                excluded.append({"image": keys[i], "reason": "near-duplicate of a val image",
                                 "group": sorted(partners)[:5]})
                continue
            assign[keys[i]] = split

    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "val": 0})
    for i, r in enumerate(records):
        if keys[i] in assign:
            counts[r.source][assign[keys[i]]] += 1
    log.info("split: %d near-duplicate pairs, %d excluded, counts %s",
             len(dup_pairs), len(excluded), dict(counts))
    return {
        "version": SPLIT_VERSION,
        "seed": seed,
        "val_fraction": val_fraction,
        "near_duplicate_corr": NEAR_DUP_CORR,
        "n_near_duplicate_pairs": len(dup_pairs),
        "counts": dict(counts),
        "excluded": excluded,
        "assignment": dict(sorted(assign.items())),
    }


def write_split(split: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(split, indent=1))


def read_split(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def select(records: list[Record], split: dict, which: str, data_dir: Path) -> list[Record]:
    """Records assigned to ``which`` ('train' / 'val') by a split file."""
    a = split["assignment"]
    return [r for r in records if a.get(rel_key(r, data_dir)) == which]
