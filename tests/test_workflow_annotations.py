"""Step 1: cleaning the annotation sheet (CSV, TSV, XLSX; Chinese and English headers)."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.workflow.annotations import CleanOptions, clean_annotations, read_sheet
from tests.workflow_util import write_xlsx

HEADER = ["视频链接", "人工评价颜值", "人工识别性别", "人工推测年龄（数字）", "备注"]
H = "http://127.0.0.1:9/v"
ROWS = [  # sheet rows 2..16
    [f"{H}/a1.mp4", 85, "女", 23, ""],
    [f"{H}/a2.mp4", 70, "男", 30, "已删除"],
    [f"{H}/a3.mp4", 72, "女", 25, "视频未露脸"],
    [f"{H}/a4.mp4", 66, "女", 20, "多人出镜"],
    [f"{H}/a5.mp4", 90, "女", 21, "人脸不全"],
    [f"{H}/a6.mp4", 77, "男", 40, "疑似非本人作品"],
    [f"{H}/a7.mp4", "-", "", "", ""],
    [f"{H}/a8.mp4", "abc", "女", 22, ""],
    [f"{H}/a9.mp4", 100, "女", 22, ""],
    [f"{H}/a10.mp4", 59, "男", 22, ""],
    [f"{H}/a1.mp4", 80, "女", 23, ""],
    ["", 80, "女", 23, ""],
    [f"{H}/a13.mp4", 99, "女", 19, "光线较暗"],
    [f"{H}/a14.mp4", 60, "男", 50, ""],
    [f"{H}/play.mp4?id=a15", 85.0, "女", 33, ""],
]
EXPECTED_EXCLUDED = {
    "已删除": 1, "未露脸": 1, "多人出镜": 1, "人脸不全": 1, "疑似非本人作品": 1, "not scored ('-')": 1,
    "score not numeric": 1, "score out of range": 2, "duplicate url": 1, "no url": 1,
}


def write_csv_sheet(path, header, rows, delimiter=",", encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def check_result(result):
    assert dict(result.excluded) == EXPECTED_EXCLUDED
    assert result.total == 15
    assert [r["video_id"] for r in result.rows] == ["a1", "a13", "a14", "a15"]
    assert [r["score"] for r in result.rows] == ["85", "99", "60", "85"]
    assert [r["row"] for r in result.rows] == ["2", "14", "15", "16"]
    assert result.rows[1]["remark"] == "光线较暗" and result.rows[0]["gender"] == "女"
    joined = "\n".join(result.messages)
    assert ":9: score 'abc' is not a number" in joined
    assert ":10: score 100 is outside 60..99" in joined and ":11: score 59" in joined


def test_csv_with_chinese_headers_counts_every_reason(tmp_path):
    sheet = write_csv_sheet(tmp_path / "sheet.csv", HEADER, ROWS)
    result = clean_annotations(sheet, tmp_path / "clean.csv")
    check_result(result)
    with open(tmp_path / "clean.csv", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    assert [r["url"] for r in written] == [r["url"] for r in result.rows]
    assert list(written[0]) == ["row", "video_id", "url", "score", "gender", "age", "remark"]
    table = result.table()
    assert "已删除" in table and "kept" in table and "15" in table


def test_xlsx_read_with_stdlib_gives_the_same_rows(tmp_path):
    sheet = write_xlsx(tmp_path / "sheet.xlsx", [HEADER, *ROWS])
    check_result(clean_annotations(sheet))
    rows = read_sheet(sheet)
    assert rows[0] == (1, HEADER)
    assert rows[1][1][:2] == [f"{H}/a1.mp4", "85"]


def test_xlsx_named_sheet_and_gaps(tmp_path):
    sheet = write_xlsx(tmp_path / "s.xlsx", [["url", "score"], ["http://x/v1.mp4", None], ["http://x/v2.mp4", 61]], "标注")
    assert read_sheet(sheet, "标注")[1] == (2, ["http://x/v1.mp4"])
    with pytest.raises(CaffeCompatError, match="no worksheet named 'other' \\(has 标注\\)"):
        read_sheet(sheet, "other")


def test_tsv_with_english_headers_and_gb18030_csv(tmp_path):
    english = ["URL", "Score", "Gender", "Age", "Remark"]
    tsv = write_csv_sheet(tmp_path / "sheet.tsv", english, ROWS, delimiter="\t")
    check_result(clean_annotations(tsv))
    header = ["视频链接", "人工评价颜值", "人工识别性别", "人工推测年龄(数字)", "备注"]  # ASCII parentheses
    gbk = write_csv_sheet(tmp_path / "gbk.csv", header, ROWS, encoding="gb18030")
    check_result(clean_annotations(gbk))


def test_title_row_above_the_header(tmp_path):
    sheet = write_xlsx(tmp_path / "t.xlsx", [["颜值标注 2017"], [], HEADER, *ROWS])
    result = clean_annotations(sheet)
    assert result.total == 15 and [r["row"] for r in result.rows] == ["4", "16", "17", "18"]


def test_exclusions_are_configurable(tmp_path):
    sheet = write_csv_sheet(tmp_path / "sheet.csv", HEADER, ROWS)
    options = CleanOptions(excluded_remarks=("已删除",), missing_scores=("-", "abc"))
    result = clean_annotations(sheet, options=options)
    assert result.excluded["已删除"] == 1 and "未露脸" not in result.excluded
    assert result.excluded["not scored ('-')"] == 2 and "score not numeric" not in result.excluded
    assert len(result.rows) == 8


def test_strict_stops_at_the_first_bad_score_and_writes_nothing(tmp_path):
    sheet = write_csv_sheet(tmp_path / "sheet.csv", HEADER, ROWS)
    with pytest.raises(CaffeCompatError, match=r"sheet.csv:9: score 'abc' is not a number"):
        clean_annotations(sheet, tmp_path / "clean.csv", CleanOptions(strict=True))
    assert not (tmp_path / "clean.csv").exists()


def test_missing_columns_name_what_is_expected(tmp_path):
    sheet = write_csv_sheet(tmp_path / "sheet.csv", ["视频链接", "人工识别性别", "备注"], [[f"{H}/a.mp4", "女", ""]])
    with pytest.raises(CaffeCompatError) as info:
        clean_annotations(sheet)
    message = str(info.value)
    assert "sheet.csv:1: missing column(s): score (one of 人工评价颜值" in message
    assert "header has 视频链接, 人工识别性别, 备注" in message and "\n" not in message


def test_unreadable_inputs(tmp_path):
    with pytest.raises(CaffeCompatError, match="no such file"):
        clean_annotations(tmp_path / "none.csv")
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(CaffeCompatError, match="not a readable .xlsx workbook"):
        clean_annotations(tmp_path / "bad.xlsx")
    (tmp_path / "sheet.ods").write_bytes(b"")
    with pytest.raises(CaffeCompatError, match="unsupported sheet type"):
        clean_annotations(tmp_path / "sheet.ods")


def test_cli_prints_the_table_and_clear_errors(tmp_path):
    sheet = write_csv_sheet(tmp_path / "sheet.csv", HEADER, ROWS)
    runner = CliRunner()
    ok = runner.invoke(main, ["workflow", "clean-annotations", str(sheet), "-o", str(tmp_path / "c.csv"),
                              "--exclude-remark", "已删除"])
    assert ok.exit_code == 0, ok.output
    assert "wrote 8 rows" in ok.output and "未露脸" not in ok.output
    bad = write_csv_sheet(tmp_path / "bad.csv", ["url"], [["http://x/a.mp4"]])
    fail = runner.invoke(main, ["workflow", "clean-annotations", str(bad), "-o", str(tmp_path / "d.csv")])
    assert fail.exit_code == 1 and "Traceback" not in fail.output
    assert "missing column(s): score" in fail.output
    assert not (tmp_path / "d.csv").exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12), min_size=1, max_size=30),
                min_size=1, max_size=4))
def test_xlsx_cells_round_trip(tmp_path_factory, rows):
    path = write_xlsx(tmp_path_factory.mktemp("x") / "r.xlsx", rows)
    expected = [(i, row) for i, row in enumerate(rows, start=1)]
    got = read_sheet(path)
    # empty cells are not stored, so a row reads back up to its last non-empty cell
    assert [(n, cells) for n, cells in got] == [(n, _trim(row)) for n, row in expected]


def _trim(row):
    while row and row[-1] == "":
        row = row[:-1]
    return row
