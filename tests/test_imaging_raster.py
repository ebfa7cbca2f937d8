"""PNG/JPEG/TIFF/BMP loading: real dataset samples and synthetic edge cases."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from factories import chest_phantom, png_bytes
from PIL import Image

from xrayviewer.errors import CorruptImageError, ImageTooLargeError, NotAnImageError
from xrayviewer.imaging import load_image


def _sample(data_dir: Path) -> list[Path]:
    files = sorted((data_dir / "covid-qu-ex" / "Val" / "Normal" / "images").glob("*.png"))[:3]
    files += sorted((data_dir / "nih" / "X-Ray Image DataSet" / "Pneumonia").glob("*.png"))[:3]
    files += sorted((data_dir / "ieee8023" / "images").glob("*.jp*g"))[:6]
    files += sorted((data_dir / "generalblockchain" / "images").iterdir())[:3]
    return files


def test_real_raster_samples_match_pillow(data_dir: Path) -> None:
    files = _sample(data_dir)
    assert len(files) >= 12
    for path in files:
        img = load_image(path)
        ref = np.asarray(Image.open(path).convert("L"))
        assert img.shape == ref.shape, path
        assert img.metadata.format in ("PNG", "JPEG")
        if img.metadata.bits_stored == 8:
            # Grey files are kept exactly; colour-converted ones match Pillow's own L conversion.
            np.testing.assert_array_equal(img.values, ref)
        assert img.display.dtype == np.uint8
        assert img.metadata.pixel_spacing is None


def test_jpg_named_files_with_png_content(data_dir: Path) -> None:
    """DATA.md: 17 ieee8023 files named .jpg contain PNG data; content decides."""
    pngs = [p for p in sorted((data_dir / "ieee8023" / "images").glob("*.jpg"))
            if p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"]
    assert pngs, "expected some PNG-in-.jpg files"
    assert load_image(pngs[0]).metadata.format == "PNG"


def test_16bit_png_kept_at_full_depth() -> None:
    arr = (chest_phantom(64) * 60000).astype(np.uint16)
    img = load_image(png_bytes(arr))
    assert img.values.dtype == np.uint16
    np.testing.assert_array_equal(img.values, arr)
    assert img.metadata.bits_stored == 16
    assert img.display.min() == 0 and img.display.max() == 255


def test_16bit_tiff_kept_at_full_depth() -> None:
    arr = (chest_phantom(48) * 4095).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="TIFF")
    img = load_image(buf.getvalue())
    assert img.metadata.format == "TIFF" and img.values.dtype == np.uint16
    np.testing.assert_array_equal(img.values, arr)


def test_rgb_png_converted_with_warning() -> None:
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 0] = 200
    img = load_image(png_bytes(rgb))
    assert img.values.ndim == 2
    assert any("colour" in w for w in img.warnings)


def test_grey_stored_as_rgb_has_no_warning() -> None:
    grey = (chest_phantom(32) * 255).astype(np.uint8)
    img = load_image(png_bytes(np.stack([grey] * 3, axis=-1)))
    np.testing.assert_array_equal(img.values, grey)
    assert img.warnings == ()


def test_exif_orientation_applied() -> None:
    arr = np.zeros((20, 40), np.uint8)
    arr[:, :10] = 255  # bright band on the left of a landscape image
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW for display
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    img = load_image(buf.getvalue())
    assert img.shape == (40, 20)
    assert img.values[:10].mean() > 200  # the band is now on top


def test_multiframe_tiff_first_frame_with_warning() -> None:
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8)) for v in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="TIFF", save_all=True, append_images=frames[1:])
    img = load_image(buf.getvalue())
    assert int(img.values.mean()) == 10
    assert any("first frame" in w for w in img.warnings)


def test_bmp_and_tiny_image() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((1, 1), 77, np.uint8)).save(buf, format="BMP")
    img = load_image(buf.getvalue())
    assert img.metadata.format == "BMP" and img.shape == (1, 1) and img.values[0, 0] == 77


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    data = png_bytes((chest_phantom(64) * 255).astype(np.uint8))
    path = tmp_path / "cut.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_huge_png_header_refused_before_decode() -> None:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b"")
    with pytest.raises(ImageTooLargeError, match="100000x100000|decompression bomb"):
        load_image(data, name="bomb.png")


@pytest.mark.parametrize(
    ("content", "pattern"),
    [
        (b"", "empty"),
        (b"hello, this is text\n" * 10, "not an image"),
        (b"GIF89a" + b"\0" * 100, "GIF"),
        (b"%PDF-1.4 " + b"\0" * 100, "PDF"),
    ],
)
def test_not_an_image(tmp_path: Path, content: bytes, pattern: str) -> None:
    path = tmp_path / "thing.png"
    path.write_bytes(content)
    with pytest.raises(NotAnImageError, match=pattern) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    from xrayviewer.errors import ImageLoadError

    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.dcm")
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)
