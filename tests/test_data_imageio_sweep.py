"""Every prefix of every fixture image decodes as ``cv::imread`` decodes that prefix as a file.

Caffe's ``convert_imageset`` keeps or skips an image by what ``cv::imread`` returns
(``ReadImageToCVMat``), so ``imread`` on a file holding the prefix is the reference. The full
sweep (every cut point, colour/grey/unchanged) is slow; the fast tests cover the cut points
where the two once disagreed (inside the start-of-scan header of a JPEG) and the file edges.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from caffe_compat.data.imageio import decode_image

FIXTURES = Path(__file__).parent / "fixtures"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}
FLAGS = {"colour": cv2.IMREAD_COLOR, "grey": cv2.IMREAD_GRAYSCALE, "unchanged": cv2.IMREAD_UNCHANGED}


def fixture_images() -> list[Path]:
    return sorted(p for p in FIXTURES.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def sos_cut_points(data: bytes) -> list[int]:
    """Each cut from the start-of-scan marker to just past its header (where imdecode gave up)."""
    sos = data.find(b"\xff\xda")
    if sos < 0:
        return []
    end = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return list(range(sos, min(end + 3, len(data)) + 1))


def mismatches(data: bytes, cuts: list[int], scratch: Path) -> list[tuple[int, str]]:
    """(cut, mode) pairs where decode_image and cv2.imread of the cut file differ."""
    bad = []
    for cut in cuts:
        prefix = data[:cut]
        scratch.write_bytes(prefix)
        for mode, flag in FLAGS.items():
            expected = cv2.imread(str(scratch), flag)
            got = decode_image(prefix, flag)
            same = (expected is None and got is None) or (
                expected is not None and got is not None and expected.dtype == got.dtype
                and np.array_equal(expected, got)
            )
            if not same:
                bad.append((cut, mode))
    return bad


def test_fixture_set_has_every_kind() -> None:
    """The sweep means something only if the fixtures hold JPEGs, PNGs and BMPs."""
    suffixes = {p.suffix.lower() for p in fixture_images()}
    assert {".jpg", ".png", ".bmp"} <= suffixes


@pytest.mark.parametrize("path", [p for p in fixture_images() if p.read_bytes().startswith(b"\xff\xd8")],
                         ids=lambda p: str(p.relative_to(FIXTURES)))
def test_cut_in_start_of_scan_header_decodes_like_imread(path, tmp_path) -> None:
    """The issue-23 cut (grad_001.jpg at 20.6%, grey) and its kin: imread reads FF D9 fill bytes
    as the missing Ss/Se/Ah-Al fields and decodes a grey image; imdecode alone gave up."""
    data = path.read_bytes()
    cuts = sos_cut_points(data)
    assert cuts, "a baseline JPEG has a start-of-scan marker"
    assert mismatches(data, cuts, tmp_path / path.name) == []


@pytest.mark.parametrize("path", fixture_images(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_file_edges_decode_like_imread(path, tmp_path) -> None:
    data = path.read_bytes()
    cuts = sorted({*range(min(6, len(data) + 1)), *range(max(len(data) - 4, 0), len(data) + 1)})
    assert mismatches(data, cuts, tmp_path / path.name) == []


def test_cut_inside_a_long_comment_between_scans_decodes_like_imread(tmp_path) -> None:
    """A progressive JPEG cut just after the length field of a 60,000-byte comment that follows
    its first scan: imread skips the rest of the comment in fill bytes, meets an EOI and returns
    the first scan's image. The appended fill must be long enough for that skip."""
    pixels = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    ok, enc = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    enc = enc.tobytes()
    first_sos = enc.find(b"\xff\xda")
    second_sos = enc.find(b"\xff\xda", first_sos + 2)
    assert second_sos > first_sos > 0, "a progressive JPEG has several scans"
    comment = b"\xff\xfe" + (60_002).to_bytes(2, "big") + bytes(range(256)) * 234 + b"\x00" * 96
    data = enc[:second_sos] + comment + enc[second_sos:]
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    cuts = [second_sos + k for k in (0, 1, 2, 3, 4, 5, 1000, 60_003, 60_004, 60_005)]
    assert mismatches(data, cuts, tmp_path / "comment.jpg") == []


@pytest.mark.slow
@pytest.mark.parametrize("path", fixture_images(), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_prefix_decodes_like_imread(path, tmp_path) -> None:
    data = path.read_bytes()
    assert mismatches(data, list(range(len(data) + 1)), tmp_path / path.name) == []
