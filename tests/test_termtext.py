"""Program output as lines: chunking never changes the lines; no line grows past the cap."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from remote_dev.termtext import TerminalText, cut_note


def lines_of(chunks: list[bytes], max_line: int = 50) -> tuple[list[str], str]:
    t = TerminalText(max_line)
    out: list[str] = []
    for c in chunks:
        out += t.feed(c)
    current = t.current()
    return out + t.feed(b"", final=True), current


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bb\n", b"x" * 70, b"\r", b"\x1b[32m", b"\n", "é".encode(), b"\xff"]),
                max_size=40), st.data())
def test_chunking_never_changes_the_lines(pieces, data):
    whole = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(whole)), max_size=8)))
    chunks = [whole[a:b] for a, b in zip([0, *cuts], [*cuts, len(whole)])]
    assert lines_of(chunks)[0] == lines_of([whole])[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([b"a" * 7, b"\n", b"b" * 33]), max_size=60))
def test_no_line_passes_the_cap(pieces):
    lines, current = lines_of(pieces, 50)
    for line in lines + [current]:
        assert len(line.split(" [remote_dev: ")[0]) <= 50


def test_a_long_line_without_newline_is_cut_and_counted():
    t = TerminalText(10)
    assert t.feed(b"x" * 25) == []
    assert t.current() == "x" * 10 + cut_note(15)
    assert t.feed(b"y" * 5) == []
    assert t.partial == "x" * 10
    assert t.feed(b"yy\nnext\n") == ["x" * 10 + cut_note(22), "next"]
    assert t.feed(b"z" * 12, final=True) == ["z" * 10 + cut_note(2)]


def test_a_progress_bar_on_one_long_line_still_collapses():
    t = TerminalText()
    for i in range(5000):
        t.feed(f"\r{i:5d}/5000 [#####]".encode())
    assert t.current() == " 4999/5000 [#####]"
    assert t.feed(b"\n") == [" 4999/5000 [#####]"]
