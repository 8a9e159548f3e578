"""The caption CSV's row logic on small strings and bytes (issue 16): UTF-8 with a BOM, quoted captions that span
lines, a quote never closed (at the end of the file, before the next row, after MAX_ROW_LINES lines), rows the
csv module cannot parse, and ``row_starts``."""
from pathlib import Path

from clipforge.data.captions import MAX_ROW_LINES, csv_rows, decode_lines, row_starts
from clipforge.data.dataset import SkipReport


def _rows(lines, starts=None):
    report = SkipReport()
    rows = list(csv_rows(list(enumerate(lines, start=1)), report, "c.csv", starts))
    return rows, report.items


def test_bom_is_dropped_on_the_first_line_only():
    report = SkipReport()
    out = decode_lines(b"\xef\xbb\xbfa.png,cat\n\xef\xbb\xbfb.png,dog\n", report, "c.csv")
    assert out == [(1, "a.png,cat"), (2, "\ufeffb.png,dog")]
    assert not report.items


def test_a_quoted_caption_spans_lines_by_default():
    rows, skipped = _rows(['a.png,"a cat', 'on a mat"', "b.png,dog"])
    assert rows == [(1, ["a.png", "a cat\non a mat"]), (3, ["b.png", "dog"])]
    assert skipped == []


def test_a_quoted_caption_late_in_the_file_still_spans_lines():
    lines = [f"f{n}.png,c{n}" for n in range(MAX_ROW_LINES + 10)] + ['z.png,"two', 'lines"']
    rows, skipped = _rows(lines)
    assert rows[-1] == (MAX_ROW_LINES + 11, ["z.png", "two\nlines"]) and skipped == []


def test_the_longest_quoted_caption_that_is_read():
    body = [f"line {n}" for n in range(MAX_ROW_LINES - 1)]
    ok, skipped = _rows(['a.png,"start'] + body + ['end"', "b.png,x"])   # closed on the MAX_ROW_LINES-th line after
    assert skipped == [] and ok[0][1][1].count("\n") == MAX_ROW_LINES and ok[1] == (MAX_ROW_LINES + 2, ["b.png", "x"])
    rows, skipped = _rows(['a.png,"start'] + body + ["more", 'end"'])  # one line more: never closed in time
    assert skipped[0][0] == "c.csv:1"
    assert skipped[0][1] == "a quoted field is never closed (missing '\"'?); the row is skipped"


def test_a_quote_open_at_the_end_of_the_file():
    for starts in (None, lambda text: text.startswith("b.png")):
        rows, skipped = _rows(["a.png,cat", 'b.png,"open'], starts)
        assert rows == [(1, ["a.png", "cat"])]
        assert skipped == [("c.csv:2", "a quoted field is never closed (missing '\"'?); the row is skipped")]


def test_a_quote_open_before_the_next_row():
    rows, skipped = _rows(['a.png,"open', "b.png,dog", "c.png,cow"], starts=lambda text: text[:1] in "bc")
    assert rows == [(2, ["b.png", "dog"]), (3, ["c.png", "cow"])]
    assert skipped == [("c.csv:1", "a quoted field is never closed before the next row (line 2) "
                                   "(missing '\"'?); the row is skipped")]


def test_a_row_the_csv_module_cannot_parse_is_reported_and_reading_goes_on():
    rows, skipped = _rows(["a.png,cat", "b.png," + "x" * 200_000, "c.png,cow"])
    assert rows == [(1, ["a.png", "cat"]), (3, ["c.png", "cow"])]
    assert len(skipped) == 1 and skipped[0][0] == "c.csv:2"
    assert skipped[0][1].startswith("cannot parse CSV row: field larger than field limit")


def test_blank_lines_are_skipped_and_reading_goes_on():
    rows, skipped = _rows(["", "a.png,cat", "   ", "b.png,dog"])
    assert rows == [(2, ["a.png", "cat"]), (4, ["b.png", "dog"])] and skipped == []


def test_row_starts(tmp_path: Path):
    (tmp_path / "a.png").write_bytes(b"")
    starts = row_starts(0, (tmp_path,))
    assert starts("a.png,a cat")
    assert starts(" a.png ,a cat")
    assert not starts("missing.png,a cat")
    assert not starts("a.png")                           # one field: not a row
    assert not starts(",a cat") and not starts("  ,a cat")
    assert not starts("")
    assert not starts("a.png," + "x" * 200_000)          # csv.Error
    assert not starts("x" * 5000 + ",a cat")             # a name too long for the OS
    assert not starts("a\0b.png,a cat")                  # a NUL byte
    assert not row_starts(2, (tmp_path,))("a.png,a cat")  # no such column
    assert row_starts(1, (tmp_path,))("cap,a.png")
    assert not row_starts(1, (tmp_path,))("a.png,")


def test_row_starts_with_an_absolute_path(tmp_path: Path):
    f = tmp_path / "a.png"
    f.write_bytes(b"")
    assert row_starts(0, ())(f"{f},a cat")                 # absolute: no root needed
    assert row_starts(0, (tmp_path / "elsewhere",))(f"{f},a cat")
    assert not row_starts(0, ())("a.png,a cat")
