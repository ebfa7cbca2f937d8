"""Mutation fuzzing of the loaders, seeded with real files: every input ends in a valid
image or an XRayViewerError, never another exception type or a hang.

CI runs a bounded number of examples (XRAYVIEWER_FUZZ_EXAMPLES raises it for a longer job).
Crashers found are pinned below as explicit regression cases.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xrayviewer.errors import XRayViewerError
from xrayviewer.imaging import XRayImage, load_image

EXAMPLES = int(os.environ.get("XRAYVIEWER_FUZZ_EXAMPLES", "120"))
TIME_LIMIT_S = 10


def _seeds(data_dir: Path) -> list[bytes]:
    dicom = data_dir / "dicom"
    files = [dicom / "dx_image.dcm", dicom / "non_cxr" / "CT_small.dcm", dicom / "non_cxr" / "MR_small.dcm"]
    files.append(sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[0])
    files += [p for p in sorted((data_dir / "ieee8023" / "images").glob("*.jp*g"))[:2]]
    return [f.read_bytes() for f in files]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "int"]))
        n = len(data)
        if n == 0:
            break
        pos = draw(st.integers(0, n - 1))
        # Bias towards the header, where parsers make their decisions.
        if draw(st.booleans()):
            pos = pos % min(n, 1024)
        if op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:  # overwrite with an extreme 16/32-bit value (sizes, lengths, bit depths)
            val = draw(st.sampled_from([0, 1, 0xFF, 0xFFFF, 0x7FFF, 0xFFFFFFFF, 0x8000]))
            data[pos:pos + 4] = int(val).to_bytes(4, "little")
    return bytes(data)


def _alarm(signum, frame):  # noqa: ANN001
    raise TimeoutError(f"load_image took longer than {TIME_LIMIT_S}s")


def _check(data: bytes) -> None:
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        img = load_image(data, name="fuzz")
    except XRayViewerError as exc:
        assert "fuzz" in str(exc)
        return
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert isinstance(img, XRayImage)
    assert img.display.dtype == np.uint8 and img.display.shape == img.values.shape[:2]


def test_mutated_real_files_never_crash(data_dir: Path) -> None:
    seeds = _seeds(data_dir)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("XRAYVIEWER_FUZZ_RANDOM"),
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(seeds))
    def run(data: bytes) -> None:
        _check(data)

    run()


@given(st.binary(max_size=600))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("XRAYVIEWER_FUZZ_RANDOM"))
def test_random_bytes_with_signatures(data: bytes) -> None:
    for prefix in (b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"\0" * 128 + b"DICM", b"\x08\x00\x16\x00UI"):
        _check(prefix + data)


@pytest.mark.parametrize("case", [
    b"\0" * 128 + b"DICM",  # preamble and nothing else
    b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",  # element length past the end
    b"\x08\x00\x16\x00UI\x1c\x00",  # bare dataset cut inside the first value
    bytes.fromhex(  # TIFF whose next IFD lacks dimensions: Pillow raised TypeError (atheris, 2026-11-23)
        "49492a0008000000090000010400010000005000000001010400010000006000"
        "0000020103000100000010000000030103000100000001000000060103000100"
        "00000100000011010400010000007a0000001601040001000000600000001701"
        "040001000000003c00001c010300010000000100ffffffffffffffff00000000"
    ),
], ids=["preamble-only", "length-past-end", "bare-dataset-cut", "tiff-missing-dimensions"])
def test_pinned_regressions(case: bytes) -> None:
    _check(case)
