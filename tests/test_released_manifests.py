"""Tests of the released CAN manifest reader on the published CAN2000 file and on edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from dermcan import released_manifests as rm

CAN2000 = Path("/work/shared/data/manifests/CAN2000.csv")
CRAWLER_LOG = Path("/work/shared/data/manifests/skinimagecrawler_url_filepath_melanoma_eng_kor_20191031.csv")

needs_can2000 = pytest.mark.skipif(not CAN2000.is_file(), reason="released CAN2000 file not present")


@pytest.fixture(scope="module")
def can2000() -> rm.ManifestReport:
    return rm.read_manifest(CAN2000)


def _row(report: rm.ManifestReport, row_id: str) -> rm.ManifestRow:
    matches = [row for row in report.rows if row.row_id == row_id]
    assert len(matches) == 1, f"row {row_id} found {len(matches)} times"
    return matches[0]


@needs_can2000
def test_can2000_row_and_class_counts(can2000: rm.ManifestReport) -> None:
    assert len(can2000.rows) == 2006
    assert can2000.label_counts() == {"malignantmelanoma": 908, "melanocyticnevus": 1098}
    assert can2000.status_counts() == {"degenerate_box": 76, "ok": 1930}
    assert len(can2000.comment_lines) == 2


@needs_can2000
def test_can2000_numbering_gaps(can2000: rm.ManifestReport) -> None:
    assert can2000.missing_numbers == [95, 602, 1052]
    assert can2000.repeated_numbers == []
    assert can2000.rows[0].row_id == "00000"
    assert can2000.rows[-1].row_id == "02008"


@needs_can2000
def test_can2000_url_with_spaces(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00128")
    assert row.source_url == (
        "http://www.siue.edu/~sumbaug/Borders Complete/Dysplastic Nevus/Dysplastic Nevus Images/Fcl012.jpg"
    )
    assert row.url == (
        "http://www.siue.edu/~sumbaug/Borders%20Complete/Dysplastic%20Nevus/"
        "Dysplastic%20Nevus%20Images/Fcl012.jpg"
    )
    assert row.status == rm.STATUS_OK


@needs_can2000
def test_can2000_raw_non_ascii_url(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00116")
    assert row.source_url.endswith("/włókniak-miękki.jpg")
    assert row.url.endswith("/w%C5%82%C3%B3kniak-mi%C4%99kki.jpg")
    assert row.url.isascii()


@needs_can2000
def test_can2000_percent_escapes_kept(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00024")
    assert "%D9%A2%D9%A0" in row.source_url
    assert row.url == row.source_url


@needs_can2000
def test_can2000_literal_u003d_decoded(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00094")
    assert "\\u003d" in row.source_url
    assert row.url.startswith(
        "https://quizlet.com/cdn-cgi/image/f=auto,fit=cover,h=200,onerror=redirect,w=240/"
    )
    assert "\\" not in row.url


@needs_can2000
def test_can2000_zero_height_is_degenerate(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00004")
    assert row.height == 0.0
    assert row.status == rm.STATUS_DEGENERATE_BOX
    assert "zero size" in row.reason


@needs_can2000
def test_can2000_zero_width_is_degenerate(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00236")
    assert row.width == 0.0
    assert row.status == rm.STATUS_DEGENERATE_BOX


@needs_can2000
def test_can2000_box_past_edge_flagged(can2000: rm.ManifestReport) -> None:
    row = _row(can2000, "00008")  # y_center 0.288, height 0.577: the top edge is at -0.0005
    assert row.status == rm.STATUS_OK
    assert row.past_edge is True
    box = rm.box_in_pixels(row, 1000, 2000)
    assert box.y0 == 0
    assert box.clipped is True
    assert sum(row.past_edge for row in can2000.rows if row.status == rm.STATUS_OK) == 275


@needs_can2000
def test_can2000_repeated_url_keeps_rows(can2000: rm.ManifestReport) -> None:
    url = "https://i.pinimg.com/originals/28/d6/92/28d6927c1cb955f44329d01e2dfb1476.jpg"
    rows = [row for row in can2000.rows if row.url == url]
    assert [row.row_id for row in rows] == ["01351", "01624", "01734", "01889", "01946"]
    assert len({(row.x_center, row.y_center) for row in rows}) == 5
    assert len({row.url for row in can2000.rows}) == 1858


@needs_can2000
def test_can2000_repeated_url_with_two_labels(can2000: rm.ManifestReport) -> None:
    url = "http://dermatologia.cat/wp-content/uploads/2018/05/melanoma.jpg"
    labels = {row.label for row in can2000.rows if row.url == url}
    assert labels == {"malignantmelanoma", "melanocyticnevus"}


EDGE_CASES = """\
## edge cases written for this test
00000 melanocyticnevus 0.5 0.5 0.5 0.5 http://127.0.0.1/a.jpg
00001 Malignant_Melanoma 0.5 0.5 0.5 0.5 http://127.0.0.1/b.jpg

00003 psoriasis 0.5 0.5 0.5 0.5 http://127.0.0.1/c.jpg
00004 melanocyticnevus 0.5 0.5 0.5 http://127.0.0.1/d.jpg
0000x melanocyticnevus 0.5 0.5 0.5 0.5 http://127.0.0.1/e.jpg
00006 melanocyticnevus 0.5 0.5 -0.5 0.5 http://127.0.0.1/f.jpg
00007 melanocyticnevus 0.5 nan 0.5 0.5 http://127.0.0.1/g.jpg
00008 melanocyticnevus 0.5 0.5 0.5 0.5 ftp://127.0.0.1/h.jpg
00009 melanocyticnevus 1.5 0.5 0.4 0.5 http://127.0.0.1/i.jpg
00010 melanocyticnevus 0.9 0.1 0.4 0.4 http://127.0.0.1/j.jpg
00010 melanocyticnevus\t0.5   0.5 0.5 0.5 http://127.0.0.1/k 1.jpg
"""


@pytest.fixture()
def edge_report(tmp_path: Path) -> rm.ManifestReport:
    path = tmp_path / "edge.txt"
    path.write_text(EDGE_CASES, encoding="utf-8")
    return rm.read_manifest(path)


def test_edge_cases_statuses(edge_report: rm.ManifestReport) -> None:
    statuses = [(row.line_number, row.status) for row in edge_report.rows]
    assert statuses == [
        (2, rm.STATUS_OK),
        (3, rm.STATUS_OK),
        (5, rm.STATUS_UNKNOWN_LABEL),
        (6, rm.STATUS_MALFORMED),
        (7, rm.STATUS_MALFORMED),
        (8, rm.STATUS_MALFORMED),
        (9, rm.STATUS_MALFORMED),
        (10, rm.STATUS_MALFORMED),
        (11, rm.STATUS_DEGENERATE_BOX),
        (12, rm.STATUS_OK),
        (13, rm.STATUS_OK),
    ]


def test_edge_cases_reasons(edge_report: rm.ManifestReport) -> None:
    by_line = {row.line_number: row for row in edge_report.rows}
    assert "expected 7 fields" in by_line[6].reason
    assert "is not a number" in by_line[7].reason
    assert "negative box size" in by_line[8].reason
    assert "not a finite number" in by_line[9].reason
    assert "not an absolute http" in by_line[10].reason
    assert "entirely outside" in by_line[11].reason
    assert "matches no class" in by_line[5].reason


def test_edge_cases_label_alias_and_gaps(edge_report: rm.ManifestReport) -> None:
    by_line = {row.line_number: row for row in edge_report.rows}
    assert by_line[3].label == "malignantmelanoma"
    assert edge_report.missing_numbers == [2, 5]
    assert edge_report.repeated_numbers == [10]


def test_tab_separated_fields_parse(tmp_path: Path) -> None:
    path = tmp_path / "tabs.txt"
    path.write_text("00001\tmelanoma\t0.5\t0.5\t0.2\t0.2\thttp://127.0.0.1/x y.jpg\n", encoding="utf-8")
    row = rm.read_manifest(path).rows[0]
    assert row.status == rm.STATUS_OK
    assert row.label == "malignantmelanoma"
    assert row.url == "http://127.0.0.1/x%20y.jpg"


def test_aliases_from_params(tmp_path: Path) -> None:
    path = tmp_path / "alias.txt"
    path.write_text("00001 MEL 0.5 0.5 0.2 0.2 http://127.0.0.1/x.jpg\n", encoding="utf-8")
    assert rm.read_manifest(path).rows[0].status == rm.STATUS_UNKNOWN_LABEL
    row = rm.read_manifest(path, aliases={"MEL": "malignantmelanoma"}).rows[0]
    assert row.label == "malignantmelanoma"


def test_alias_to_unknown_class_rejected() -> None:
    with pytest.raises(ValueError, match="not a class"):
        rm.build_label_lookup({"MEL": "melanomaa"})


def test_missing_manifest_names_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothere.txt"):
        rm.read_manifest(tmp_path / "nothere.txt")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://127.0.0.1/a b.jpg", "http://127.0.0.1/a%20b.jpg"),
        ("HTTP://127.0.0.1/a.jpg#frag", "http://127.0.0.1/a.jpg"),
        ("http://127.0.0.1/100%.jpg", "http://127.0.0.1/100%25.jpg"),
        ("http://127.0.0.1/a%20b.jpg", "http://127.0.0.1/a%20b.jpg"),
        ("http://127.0.0.1/i?x\\u003d1&y\\u003d2", "http://127.0.0.1/i?x=1&y=2"),
        ("http://127.0.0.1:8080/é.jpg?q=ü", "http://127.0.0.1:8080/%C3%A9.jpg?q=%C3%BC"),
        ("https://bücher.example/a.jpg", "https://xn--bcher-kva.example/a.jpg"),
        ("http://[::1]:8080/a b.jpg", "http://[::1]:8080/a%20b.jpg"),
    ],
)
def test_normalize_url(raw: str, expected: str) -> None:
    assert rm.normalize_url(raw) == expected


def test_normalize_url_is_idempotent() -> None:
    once = rm.normalize_url("http://127.0.0.1/włókniak miękki.jpg?a\\u003db")
    assert rm.normalize_url(once) == once


@pytest.mark.parametrize(
    ("box", "size", "expected"),
    [
        ((0.5, 0.5, 0.5, 0.5), (100, 200), (25, 50, 75, 150, False)),
        ((0.95, 0.5, 0.2, 0.2), (100, 100), (85, 40, 100, 60, True)),
        ((0.0, 0.0, 0.4, 0.4), (100, 100), (0, 0, 20, 20, True)),
    ],
)
def test_box_in_pixels(box: tuple[float, ...], size: tuple[int, int], expected: tuple) -> None:
    row = rm.ManifestRow(
        1, rm.STATUS_OK, x_center=box[0], y_center=box[1], width=box[2], height=box[3],
        past_edge=rm._is_past_edge(*box),
    )
    pixels = rm.box_in_pixels(row, *size)
    assert (pixels.x0, pixels.y0, pixels.x1, pixels.y1, pixels.clipped) == expected


def test_tiny_box_rounds_to_empty() -> None:
    row = rm.ManifestRow(1, rm.STATUS_OK, x_center=0.5, y_center=0.5, width=0.001, height=0.5)
    assert rm.box_in_pixels(row, 100, 100).is_empty


@pytest.mark.skipif(not CRAWLER_LOG.is_file(), reason="crawler URL log not present")
def test_read_url_mapping_crawler_log() -> None:
    mapping = rm.read_url_mapping(CRAWLER_LOG)
    assert len(mapping) > 600
    key = "http://skincancer.org/wp-content/uploads/Higgins_fig1-1.jpg"
    assert mapping[key].endswith("000001L3dwLWNvbnRlbnQvdXBsb2Fkcy9IaWdnaW5zX2ZpZzEtMS5qcGc=.jpg")


def test_read_url_mapping_header_and_commas(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_text(
        "url,filepath\nhttp://127.0.0.1/a,b.jpg?w=1,h=2,files/a.jpg\nnot a url,files/x.jpg\n",
        encoding="utf-8",
    )
    mapping = rm.read_url_mapping(path)
    assert mapping == {"http://127.0.0.1/a,b.jpg?w=1,h=2": "files/a.jpg"}


def test_read_url_mapping_cp949_line(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    korean = "http://127.0.0.1/손톱.jpg,files/a.jpg\n".encode("cp949")
    path.write_bytes(b"http://127.0.0.1/b.jpg,files/b.jpg\n" + korean + b"http://127.0.0.1/\xff\xfe.jpg,files/c.jpg\n")
    mapping = rm.read_url_mapping(path)
    assert mapping["http://127.0.0.1/%EC%86%90%ED%86%B1.jpg"] == "files/a.jpg"
    assert mapping["http://127.0.0.1/b.jpg"] == "files/b.jpg"
    assert len(mapping) == 2
    assert rm.read_url_mapping(path, fallback_encoding=None) == {"http://127.0.0.1/b.jpg": "files/b.jpg"}
