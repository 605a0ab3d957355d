"""List-file parsing: Caffe's last-space split and C atoi, with located warnings."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.data.listfile import c_atoi, parse_list_bytes, read_list
from caffe_compat.errors import CaffeCompatError

LIBC = ctypes.CDLL(None)
LIBC.atoi.argtypes = [ctypes.c_char_p]
LIBC.atoi.restype = ctypes.c_int


@settings(max_examples=300, deadline=None)
@given(st.one_of(
    st.from_regex(rb"\A[ \t\r\n\v\f]{0,2}[+-]?[0-9]{0,25}[a-z\r ]{0,3}\Z"),
    st.binary(max_size=12).filter(lambda b: b"\x00" not in b),
))
def test_c_atoi_matches_glibc(text: bytes) -> None:
    assert c_atoi(text) == LIBC.atoi(text)


def test_edge_list_like_caffe(fixtures) -> None:
    parsed = read_list(fixtures / "images" / "edge.txt")
    got = [(e.line_no, e.name, e.label) for e in parsed.entries]
    assert got == [
        (1, b"a/grad_000.jpg", 7),
        (2, b"a/grad_000.jpg ", 7),
        (3, b"a/grad_002.jpg", -3),
        (4, b"a/grad_003.jpeg", 12),
        (5, b"a/grad_009.jpg", 5),
        (6, b"a/grad_010.jpg", 0),
        (7, b"", 0),
        (8, b"a/grad_024.jpg 4", 0),
        (9, b"./b/grey_013.png", 9),
        (10, b"a/grad_000.jpg", 7),
        (11, b"a/grad_012.jpg\t6", 0),
        (12, b"c/bmp_020.bmp", 25),
    ]
    text = "\n".join(parsed.warnings)
    for line, words in [(2, "ends with whitespace"), (4, "'12abc' is not an integer"), (6, "'x' is not an integer"),
                        (7, "empty line"), (8, "nothing after the last space"), (11, "no space before a label")]:
        assert f"edge.txt:{line}: " in text and words in text
    assert "edge.txt:5:" not in text  # '+5' is a proper integer
    assert "edge.txt:1:" not in text


def test_crlf_same_entries_one_warning(fixtures) -> None:
    lf = read_list(fixtures / "images" / "val.txt")
    crlf = read_list(fixtures / "images" / "val_crlf.txt")
    assert [(e.name, e.label) for e in crlf.entries] == [(e.name, e.label) for e in lf.entries]
    assert not lf.warnings
    assert len(crlf.warnings) == 1 and "CRLF" in crlf.warnings[0] and "val_crlf.txt" in crlf.warnings[0]


def test_utf8_and_spaces_in_names(fixtures) -> None:
    names = [e.name for e in read_list(fixtures / "images" / "train.txt").entries]
    assert "a/颜值_01.jpg".encode() in names and b"a/my image 07.jpg" in names


def test_int32_overflow_wraps_and_warns(tmp_path) -> None:
    parsed = parse_list_bytes(b"a.jpg 4294967297\n", tmp_path / "l.txt")
    assert parsed.entries[0].label == 1
    assert "l.txt:1: " in parsed.warnings[0] and "int32" in parsed.warnings[0]


def test_no_final_newline_and_empty_lines_kept(tmp_path) -> None:
    parsed = parse_list_bytes(b"a.jpg 1\n\nb.jpg 2", tmp_path / "l.txt")
    assert [(e.line_no, e.name) for e in parsed.entries] == [(1, b"a.jpg"), (2, b""), (3, b"b.jpg")]


@pytest.mark.parametrize("content", [b"", None])
def test_empty_or_directory_list_is_an_error(tmp_path, content) -> None:
    path = tmp_path / "list.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(CaffeCompatError, match="list.txt"):
        read_list(path)
