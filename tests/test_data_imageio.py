"""Image decoding: the same pixels as Caffe's cv::imread, also for damaged files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from caffe_compat.data.imageio import decode_image, extension_matches, guess_encoding, load_image


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.0, 1.0), is_color=st.booleans())
@example(fraction=0.2055, is_color=False)  # issue 23: cut inside the start-of-scan header
@example(fraction=0.2055, is_color=True)
def test_truncated_jpeg_decodes_like_imread(fixtures, tmp_path_factory, fraction, is_color) -> None:
    original = (fixtures / "images" / "a" / "grad_001.jpg").read_bytes()
    cut = original[: int(len(original) * fraction)]
    path = tmp_path_factory.mktemp("cut") / "cut.jpg"
    path.write_bytes(cut)
    flag = cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE
    expected = cv2.imread(str(path), flag)
    got = decode_image(cut, flag)
    assert (got is None) == (expected is None)
    if expected is not None:
        assert np.array_equal(got, expected)


@pytest.mark.parametrize("name", ["a/grad_000.jpg", "b/grey16_016.png", "b/alpha_017.png", "c/bmpgrey_022.bmp",
                                  "d/truncated_025.jpg"])
@pytest.mark.parametrize("flag", [cv2.IMREAD_COLOR, cv2.IMREAD_GRAYSCALE, cv2.IMREAD_UNCHANGED])
def test_fixture_images_decode_like_imread(fixtures, name, flag) -> None:
    path = fixtures / "images" / name
    assert np.array_equal(decode_image(path.read_bytes(), flag), cv2.imread(str(path), flag))


def test_load_image_reasons(fixtures, tmp_path) -> None:
    img = load_image(bytes(fixtures / "images" / "a" / "grad_001.jpg"), True, 10, 0)
    assert img.pixels.shape == (90, 120, 3)  # resize only when both sides are > 0
    assert load_image(bytes(fixtures / "images" / "d" / "truncated_025.jpg"), False).truncated
    for path, reason in [(tmp_path / "none.jpg", "missing"), (tmp_path, "directory"),
                         (fixtures / "images" / "d" / "not_an_image.jpg", "undecodable")]:
        with pytest.raises(Exception) as info:
            load_image(bytes(path), True)
        assert info.value.reason == reason


def test_encoding_guess_and_match() -> None:
    assert guess_encoding(b"a/GRAD_004.JPG") == "jpg"
    assert extension_matches(b"x/a.jpeg", "jpg") and extension_matches(b"x/A.PNG", "png")
    assert not extension_matches(b"x/a.jpg", "jpeg") and not extension_matches(b"x/a.bmp", "png")
