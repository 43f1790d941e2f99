"""Program output as a terminal would show it, as lines: ANSI sequences stripped, `\\r`
rewrites (tqdm progress bars) collapsed into the line they rewrite."""

from __future__ import annotations

import codecs
import re

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def overwrite(line: str) -> str:
    """Apply carriage returns within one line: each segment overwrites the start of what
    is there, as on a terminal."""
    if "\r" not in line:
        return line
    out = ""
    for seg in line.split("\r"):
        out = seg + out[len(seg):]
    return out


def clean(text: str) -> str:
    return ANSI.sub("", text)


COLLAPSE_AT = 4096


def collapse(partial: str) -> str:
    """An unfinished line rewritten many times (a progress bar: `\r` without a newline,
    for hours) reduced to what it shows so far plus its last raw segment, so it stays
    small.  Shows the same: clean() finds nothing across a `\r` (CSI and two-character
    sequences never hold one); the line is left as is while an OSC sequence may be open."""
    cut = partial.rfind("\r")
    head = partial[:cut]
    osc = head.rfind("\x1b]")
    if osc >= 0 and "\x07" not in head[osc:] and "\x1b\\" not in head[osc:]:
        return partial
    return overwrite(clean(head)) + partial[cut:]


class TerminalText:
    """Feed bytes; get completed lines and the current (unfinished) line."""

    def __init__(self) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        text = self.partial + self.decoder.decode(data, final)
        if "\x1b" in text or "\r" in text:
            # a CRLF is a line end; keep an escape sequence split across chunks whole
            text = text.replace("\r\n", "\n")
        parts = text.split("\n")
        self.partial = parts.pop()
        if final and self.partial:
            parts.append(self.partial)
            self.partial = ""
        elif len(self.partial) > COLLAPSE_AT and "\r" in self.partial:
            self.partial = collapse(self.partial)
        if "\x1b" in text or "\r" in text or "\x08" in text:
            return [overwrite(clean(p)) for p in parts]
        return parts

    def skip(self, data: bytes, newlines: int | None = None) -> int:
        """Advance over data as feed would, without building the lines it completes (output
        too fast to show); returns how many lines it completes (newlines: their count, when
        known already)."""
        n = data.count(b"\n") if newlines is None else newlines
        if not n:
            self.feed(data)
            return 0
        # a line starts after a newline: decoding from there is exact
        self.decoder.reset()
        self.partial = ""
        self.feed(data[data.rindex(b"\n") + 1:])
        return n

    def current(self) -> str:
        """The unfinished last line as it shows now."""
        return overwrite(clean(self.partial))
