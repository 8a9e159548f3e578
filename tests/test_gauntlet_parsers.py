"""Property-based tests of the two text parsers users feed files to: the caption CSV and the class descriptions.

Properties: whatever bytes a file holds, the parser returns a result or raises the library's own error with a
message (never a UnicodeDecodeError, csv.Error, IndexError, ...); every line is either read or reported; and
what csv.writer / yaml.safe_dump wrote (commas, quotes, newlines inside captions, unicode, class names that
look like numbers or booleans) is read back exactly.
"""
from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from clipforge.data.captions import load_caption_csv
from clipforge.data.descriptions import load_descriptions
from clipforge.errors import ClipforgeError

SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_chars = st.characters(blacklist_categories=("Cs",))                 # any character a UTF-8 file can hold
_name = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"),
                min_size=1, max_size=12).filter(lambda s: s.strip())
_caption = st.text(_chars, max_size=40)


def _tmp(data: bytes, name: str) -> Path:
    d = Path(tempfile.mkdtemp())
    (d / name).write_bytes(data)
    return d / name


def _norm(s: str) -> str:
    return " ".join(s.split())


# -- caption CSV ---------------------------------------------------------------------------------------------------

@SETTINGS
@given(rows=st.lists(st.tuples(_name, _caption), max_size=12), bom=st.booleans(), crlf=st.booleans())
def test_caption_csv_reads_back_what_csv_writer_wrote(rows, bom, crlf):
    """Every row with a file name and a non-blank caption is read back (captions whitespace-normalised, newlines
    inside quoted captions included); every other row is reported with its line; nothing raises."""
    assume(all("\r" not in n and "\n" not in n for n, _ in rows))
    # csv.writer leaves a lone \r unquoted unless \r is part of its line terminator: such a file is ambiguous
    assume(crlf or all("\r" not in c for _, c in rows))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(["filename", "caption"])
    w.writerows(rows)
    data = ("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8")
    ds = load_caption_csv(_tmp(data, "c.csv"), check_files=False)
    want: dict[str, list[str]] = {}
    for n, c in rows:
        if n.strip() and _norm(c):
            want.setdefault(n.strip(), []).append(_norm(c))
    assert ds.captions == list(want.values()) and len(ds.paths) == len(want)
    bad_rows = sum(1 for n, c in rows if not n.strip() or not _norm(c))
    assert len(ds.skipped) == bad_rows
    assert all(r.strip() for _, r in ds.skipped.items)


@SETTINGS
@given(data=st.binary(max_size=300), header=st.sampled_from([b"filename,caption\n", b"", b"caption,filename,x\n"]))
def test_caption_csv_never_crashes_on_arbitrary_bytes(data, header):
    path = _tmp(header + data, "c.csv")
    try:
        ds = load_caption_csv(path, check_files=False)
    except ClipforgeError as e:
        assert str(e).strip()                                            # refused, with a message
        return
    n_lines = len((header + data).splitlines())
    assert len(ds.skipped) <= n_lines and sum(map(len, ds.captions)) <= n_lines
    assert all(c == _norm(c) and c for caps in ds.captions for c in caps)


@SETTINGS
@given(good=st.lists(st.tuples(_name.filter(lambda s: "," not in s and '"' not in s), st.text(
    st.characters(whitelist_categories=("L", "N", "Zs")), min_size=1, max_size=20).filter(str.strip)), min_size=1, max_size=6),
       junk=st.lists(st.binary(min_size=1, max_size=20).filter(lambda b: b"\n" not in b and b"\r" not in b), max_size=4))
def test_undecodable_lines_are_reported_and_the_rest_is_read(good, junk):
    lines = [b"filename,caption"] + [f"{n},{c}".encode() for n, c in good]
    bad = [b"\xff" + j for j in junk]                                    # 0xff never starts a UTF-8 sequence
    data = b"\n".join(lines[:1] + bad + lines[1:]) + b"\n"
    ds = load_caption_csv(_tmp(data, "c.csv"), check_files=False)
    reported = {item for item, _ in ds.skipped.items}
    assert {f"c.csv:{i + 2}" for i in range(len(bad))} <= reported
    assert sum(map(len, ds.captions)) == sum(1 for n, c in good if n.strip() and c.strip())


# -- class descriptions ------------------------------------------------------------------------------------------

_sentence = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85|"),
                    min_size=1, max_size=30).map(str.strip).filter(bool)
_classes = st.lists(st.one_of(_name.map(str.strip), st.sampled_from(["0", "1", "7", "yes", "no", "null", "true", "1.5", "~"])),
                    min_size=1, max_size=6, unique=True).filter(lambda ns: all(ns))


@SETTINGS
@given(data=st.data(), names=_classes)
def test_text_descriptions_read_back(data, names):
    """One line per class, sentences joined by ' | ' (any unicode, a BOM, CRLF) read back exactly."""
    sents = [data.draw(st.lists(_sentence, min_size=1, max_size=3)) for _ in names]
    eol = data.draw(st.sampled_from(["\n", "\r\n"]))
    text = eol.join(" | ".join(s) for s in sents) + eol
    path = _tmp(("\ufeff" if data.draw(st.booleans()) else "").encode() + text.encode(), "d.txt")
    assert load_descriptions(list(names), str(path)).sentences == sents


def _yaml_scalar(s: str) -> str:
    """As a person writes it: plain when it is a simple word or number, else as yaml.safe_dump quotes it."""
    if s.replace(".", "").replace("~", "").isalnum() and s.isascii():
        return s
    return yaml.safe_dump(s, allow_unicode=True, width=1000).splitlines()[0]


@SETTINGS
@given(data=st.data(), names=_classes)
def test_handwritten_yaml_with_number_and_boolean_like_class_names(data, names):
    """``0: a zero`` is the entry of class '0': class lists of digits, 'yes'/'no', 'null', '1.5' must work."""
    sents = [data.draw(_sentence) for _ in names]
    body = "".join(f"{_yaml_scalar(n)}: {_yaml_scalar(s)}\n" for n, s in zip(names, sents))
    got = load_descriptions(list(names), str(_tmp(body.encode(), "d.yaml")))
    assert got.sentences == [[s] for s in sents]


@SETTINGS
@given(raw=st.binary(max_size=200), suffix=st.sampled_from([".txt", ".yaml", ".json"]), n=st.integers(1, 4))
def test_descriptions_never_crash_on_arbitrary_bytes(raw, suffix, n):
    names = [f"class{i}" for i in range(n)]
    try:
        got = load_descriptions(names, str(_tmp(raw, "d" + suffix)))
    except ClipforgeError as e:
        assert "description file" in str(e)
        return
    assert len(got.sentences) == n and all(s and all(x.strip() == x and x for x in s) for s in got.sentences)
