"""Program output as a terminal would show it, as lines: ANSI sequences stripped, `\\r`
rewrites (tqdm progress bars) collapsed into the line they rewrite, and no line longer
than MAX_LINE characters: the rest of a longer one is cut (and counted), so that one
line printed without a newline cannot grow without bound on this side.  The log on the
remote keeps every line whole."""

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
MAX_LINE = 8192


def chars(text: str) -> int:
    """Characters of text counted as cut (a `\r` of a CRLF split across reads is not one)."""
    return len(text) - text.count("\r")


def cut_note(n: int) -> str:
    return f" [remote_dev: {n} more characters of this line cut; the log on the remote has it whole]"


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

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.partial = ""
        self.max_line = max_line
        self.cut = 0            # characters of the current line dropped so far

    def feed(self, data: bytes, final: bool = False) -> list[str]:
        text = self.decoder.decode(data, final)
        ends_cut = False
        if self.cut:
            # the current line was cut: drop what continues it, up to its newline
            nl = text.find("\n")
            if nl < 0 and not final:
                self.cut += chars(text)
                return []
            self.cut += chars(text if nl < 0 else text[:nl])
            text = "\n" if nl < 0 else text[nl:]
            ends_cut = True
        text = self.partial + text
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
        cuts = [0] * len(parts)
        if ends_cut and parts:
            cuts[0], self.cut = self.cut, 0
        for i, part in enumerate(parts):
            if len(part) > self.max_line:
                parts[i] = part[:self.max_line]
                cuts[i] += chars(part[self.max_line:])
        if len(self.partial) > self.max_line:
            self.cut = chars(self.partial[self.max_line:])
            self.partial = self.partial[:self.max_line]
        if "\x1b" in text or "\r" in text or "\x08" in text:
            parts = [overwrite(clean(p)) for p in parts]
        if any(cuts):
            parts = [p + cut_note(n) if n else p for p, n in zip(parts, cuts)]
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
        self.cut = 0
        self.feed(data[data.rindex(b"\n") + 1:])
        return n

    def current(self) -> str:
        """The unfinished last line as it shows now."""
        shown = overwrite(clean(self.partial))
        return shown + cut_note(self.cut) if self.cut else shown
