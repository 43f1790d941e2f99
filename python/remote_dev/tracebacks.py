"""Turn the output of a remote run into quickfix entries.

:func:`parse` reads everything a run printed (stdout and stderr, possibly with
ANSI colours) and returns dicts for ``setqflist()``.  It understands:

* Python tracebacks, including chained exceptions ("During handling of the
  above exception ..." / "The above exception was the direct cause ..."),
  Python 3.11+ caret lines, exception groups (``+ Exception Group Traceback``
  and ``| ``-decorated sub-tracebacks) and SyntaxError reports (a ``File``
  line without ``, in``, the source line and a caret marking the column).
* Lines prefixed by launchers: ``[rank0]: `` / ``[default0]:`` (torchrun),
  ``0: `` (``srun --label``) and combinations of them.  Each prefix is parsed
  as a separate stream, so interleaved output of several ranks still pairs
  each frame with its own exception, and the prefix is kept at the start of
  the entry text so ranks can be told apart.
* pytest reports in all ``--tb`` styles: ``path:N: in func`` plus its source
  line (short), ``>`` source lines, ``E`` lines and ``path:N: Exception``
  (long), ``path:N: Exception: message`` (line).  A traceback quoted inside
  ``E`` lines (e.g. a SyntaxError while importing a test's module) is parsed
  too.  The ``FAILED path::test - message`` summary lines carry no line
  number and are deliberately skipped: the detailed report above them
  already gives the exact locations.
* Generic ``path:line[:col]: message`` lines from compilers and linters
  (mypy, flake8, ruff, gcc, Python warnings, ...).  The path must contain a
  ``/`` or end in a letter-led extension (so ``12:30:45: msg`` or
  ``localhost:80: msg`` are not taken for locations) and the line must not be
  indented.

Frames of a debugger's own code never become entries: under debugpy a traceback
starts with runpy, debugpy and pydevd frames and, when the program was stopped
at a breakpoint, ends in pydevd's wait; only the program's frames are kept, the
exception moving to its innermost frame (see ``_debugger_free``).

A Jupyter kernel's error (IPython's own format: ``Cell In[N], line L``, ``File path:L``,
arrows at the failing line, IPython 7's ``<ipython-input-N-...> in func``) is first
rewritten in Python's format by :func:`ipython_traceback`, sent cells pointing at the file
and line they came from, then parsed like any other output.

Entries keep the printed order, warnings last (Python prints the innermost frame
last), one entry per frame.  A frame whose path ``to_local`` maps gives::

    {"filename": local, "lnum": n, "col": c, "text": t, "type": "E", "W" or ""}

``col`` is 0 except for SyntaxError frames, where it is the caret position
(1-based) in the source line as Python printed it, i.e. after Python removed
its leading whitespace.  The innermost frame of each traceback gets type
``"E"`` and the exception as text (``ValueError: bad (in func)``); the other
frames get ``in func: <source line>``.  Generic lines get type ``"E"`` when
the message starts with ``error``, ``fatal error``, ``assert`` or an exception
name such as ``AssertionError``; type ``"W"`` when it starts with ``warning`` or a
warning's name such as ``FutureWarning`` (Python's warnings).  Warnings come after
every other entry, so ``:cfirst`` lands on the error rather than on a deprecation
printed before it.

A frame outside the project (``to_local`` returns None, or the path is a
pseudo file such as ``<string>``) gives a text-only entry
``{"text": "<path>:<line>: <text>", "valid": 0}``.  A launcher prefix goes
in front of the whole text in both kinds of entries.  Consecutive entries with
the same file, line and text collapse into one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

ToLocal = Callable[[str], Optional[str]]

#: Longer lines are cut to this many characters before parsing.
MAX_LINE = 4096

# Escape sequences (CSI, OSC, two-character) and C0 control characters other
# than tab and line breaks are removed before parsing.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_CLEAN = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"
    r"|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?"
    r"|\x1b[@-_]?"
    r"|[\x00-\x08\x0e-\x1a\x1c-\x1f\x7f]"
)
# One to three launcher prefixes: "[rank0]: ", "[default0]:", "0: ", " 3: ".
_PREFIX = re.compile(r"(?:\[[\w.-]{1,32}\]:[ ]?|[ ]{0,3}[0-9]{1,6}:[ ]){1,3}")
# Beyond this many distinct prefixes (counters, not ranks) lines are taken as
# they are.
_MAX_STREAMS = 256
_PREFIX_START = frozenset("[ 0123456789")
_HEADER = re.compile(r"(?:\+[ \t]*)?(?:Exception Group )?Traceback \(most recent call last\):")
_FILE = re.compile(r'\s*File "([^"]+)", line ([0-9]{1,9})(?:, in (.+))?$')
_CARET = re.compile(r"[~^][~^ ]*$")
# The line that ends a traceback: "ValueError: bad", "KeyboardInterrupt", ...
_EXCEPTION = re.compile(r"[A-Za-z_][\w.<>]*(?::(?:\s.*)?)?$")
_BARE_NAME = re.compile(r"[A-Za-z_][\w.]*$")
_IN_FUNC = re.compile(r"in (\S+)$")
_LOCATION = re.compile(r"""([^\s:"'<>|]+):([0-9]{1,9})(?::([0-9]{1,9}))?:(?:\s+(.*))?$""")
_EXTENSION = re.compile(r"\.[A-Za-z][\w+-]{0,9}$")
# An exception name that says so: "SyntaxError: ...", "Failed: ...".
_EXCEPTION_NAME = r"[\w.]*(?:Error|Exception|Failed|Failure|Interrupt|Exit)\b"
_NAMED_EXCEPTION = re.compile(_EXCEPTION_NAME)
# Paths of a debugger's own code (debugpy, its vendored pydevd, a pydevd install; Cython
# frames print as "_pydevd_bundle/pydevd_cython.pyx") and of the runpy that starts it.
_DEBUGGER = re.compile(r"(?:^|/)(?:debugpy|_pydevd_bundle|_pydev_bundle|_pydevd_frame_eval|_pydev_runfiles|"
                       r"pydevd_plugins)/|(?:^|/)pydevd\.py$")
_RUNPY = re.compile(r"(?:^|/)runpy\.py$|^<frozen runpy>$")
_STDLIB = re.compile(r"/lib/python[0-9][0-9.]*/(?!site-packages/|dist-packages/)|^<frozen ")
_ERRORISH = re.compile(r"(?i:(?:fatal )?error)\b|assert\b|" + _EXCEPTION_NAME)
# "FutureWarning: ...", "UserWarning: ...", "warning: unused variable"
_WARNINGISH = re.compile(r"(?i:warning)\b|[\w.]*Warning\b")


@dataclass
class _Frame:
    """One location found in the output; becomes one quickfix entry."""

    path: str
    lnum: int
    prefix: str
    col: int = 0
    func: Optional[str] = None
    source: Optional[str] = None
    message: Optional[str] = None
    error: bool = False
    warning: bool = False
    # The Python traceback the frame belongs to (one object per traceback), None for others.
    tb: Optional[object] = None

    def body(self) -> str:
        """The entry text without the launcher prefix."""
        if self.message is not None:
            return f"{self.message} (in {self.func})" if self.func else self.message
        if self.func:
            return f"in {self.func}: {self.source}" if self.source else f"in {self.func}"
        return self.source or ""


def _with_name(name: str, message: Optional[str]) -> str:
    """pytest's ``path:N: Name`` plus its first ``E`` message as one text."""
    if not message:
        return name
    head = message.split(":", 1)[0]
    if head == name or head.endswith("." + name):
        return message
    return f"{name}: {message}"


class _Stream:
    """The lines that share one launcher prefix, each handed to its grammar: Python
    tracebacks (``_PythonGrammar``), pytest reports (``_PytestGrammar``, which also reads
    generic ``path:line: message`` lines, ``_generic``); the source and caret lines under a
    frame of either are read here."""

    def __init__(self, prefix: str, out: List[_Frame], quoted: bool = False) -> None:
        self.prefix = prefix
        self.out = out
        # Frame whose source line / caret line may follow (indented deeper).
        self.cur: Optional[_Frame] = None
        self.cur_indent = 0
        self.source_indent = 0
        self.python = _PythonGrammar(self)
        self.pytest = _PytestGrammar(self, quoted)

    @property
    def busy(self) -> bool:
        """True while a line without ':' or 'File' could still matter."""
        return self.python.active or self.cur is not None or self.pytest.busy

    def feed(self, line: str) -> None:
        """Consume one line (ANSI and launcher prefix already removed)."""
        stripped = line.lstrip()
        if stripped[:1] == "|":
            # Exception group: "  |   File ..." is "  File ..." of a sub-traceback.
            line = stripped[2:] if stripped[1:2] == " " else stripped[1:]
            stripped = line.lstrip()
        if not stripped:
            self.cur = self.pytest.frame = None
            return
        indent = len(line) - len(stripped)
        if stripped[:1] in "+TE" and _HEADER.match(stripped):
            self.python.header(indent)
            self.cur = self.pytest.frame = None
            return
        if stripped.startswith('File "'):
            m = _FILE.match(line)
            if m:
                self.python.frame_line(m, indent)
                return
        cur = self.cur
        if cur is not None and indent > self.cur_indent:
            self._source_or_caret(cur, stripped, indent)
            return
        self.cur = None
        if not self.python.end(stripped, indent):
            self.pytest.feed(line, stripped, indent)

    def expect_source(self, frame: _Frame, indent: int) -> None:
        self.cur, self.cur_indent = frame, indent

    def _source_or_caret(self, frame: _Frame, stripped: str, indent: int) -> None:
        if frame.source is None:
            frame.source = stripped.rstrip()
            self.source_indent = indent
        elif frame.func is None and frame.col == 0 and _CARET.match(stripped):
            # SyntaxError: the caret marks the column in the printed source.
            frame.col = max(indent - self.source_indent + 1, 0)


class _PythonGrammar:
    """Python tracebacks: the header, ``File "...", line N, in func`` frames (one object
    ``tb`` per traceback), and the exception line that ends it."""

    def __init__(self, stream: _Stream) -> None:
        self.stream = stream
        self.active = False                    # a traceback is being read
        self.frame: Optional[_Frame] = None    # its innermost frame so far
        self.indent = 0
        self.tb: object = object()

    def header(self, indent: int) -> None:
        self.active, self.frame, self.tb = True, None, object()
        self.indent = indent + 1

    def frame_line(self, m: re.Match, indent: int) -> None:
        s = self.stream
        if not self.active:
            self.tb = object()
        frame = _Frame(m.group(1), int(m.group(2)), s.prefix, func=m.group(3), tb=self.tb)
        if frame.func is not None:
            frame.func = frame.func.strip()
        s.out.append(frame)
        # Without a header: a SyntaxError of the main script, or output cut above the header.
        self.active = True
        self.indent = indent
        self.frame = frame
        s.expect_source(frame, indent)
        s.pytest.frame = None

    def end(self, stripped: str, indent: int) -> bool:
        """A line indented less than the traceback ends it; True when it is the exception."""
        if not self.active or indent >= self.indent:
            return False
        self.active = False
        if self.frame is not None and _EXCEPTION.match(stripped):
            self.frame.message = stripped.rstrip()
            self.frame.error = True
            return True
        return False


class _PytestGrammar:
    """pytest reports (``E`` lines, ``>`` source lines, ``path:N: ...`` locations in every
    --tb style) and, when no report is being read, generic ``path:line[:col]: message``
    lines."""

    def __init__(self, stream: _Stream, quoted: bool) -> None:
        self.stream = stream
        # A stream reading the text of pytest "E" lines has no "E" lines itself.
        self.is_quoted = quoted
        # The last ">" source line; the --tb=short frame that the following "E" lines
        # belong to; for --tb=long, the "E" block waiting for its "path:N: Name" line (best
        # message, where it began in ``out``) and the stream parsing the text quoted in "E" lines.
        self.source: Optional[str] = None
        self.frame: Optional[_Frame] = None
        self.error: Optional[str] = None
        self.e_start: Optional[int] = None
        self.quoted: Optional[_Stream] = None

    @property
    def busy(self) -> bool:
        return self.frame is not None or self.e_start is not None

    def feed(self, line: str, stripped: str, indent: int) -> None:
        if line[0] == "E" and line[1:2] in ("", " ", "\t") and not self.is_quoted:
            self.error_line(line)
            return
        self.frame = None
        if ":" in line and indent == 0:
            m = _LOCATION.match(line)
            if m and ("/" in m.group(1) or _EXTENSION.search(m.group(1))):
                self.location(m)
                return
        # "E" lines not followed by their location: pytest output ended early.
        self.error = self.e_start = None
        if line[0] == ">" and line[1:2] in (" ", "\t"):
            self.source = stripped[1:].strip()

    def error_line(self, line: str) -> None:
        """An ``E`` line of a pytest report.

        With --tb=short the ``E`` lines follow the failing ``path:N: in func``
        frame; with --tb=long they come before the ``path:N: Name`` line.  The
        first message is kept unless a later line names an exception (as
        after a quoted traceback); the lines are also parsed as a traceback of
        their own to find quoted ``File`` frames.
        """
        s = self.stream
        content = line[1:]
        target = self.frame
        if target is None and self.e_start is None:
            self.e_start = len(s.out)
            self.quoted = None
        message = content.strip()
        if message:
            current = target.message if target is not None else self.error
            if current is None or (_NAMED_EXCEPTION.match(message) and not _NAMED_EXCEPTION.match(current)):
                if target is not None:
                    target.message = message
                else:
                    self.error = message
        if target is not None:
            target.error = True
        if self.quoted is None:
            self.quoted = _Stream(s.prefix, s.out, quoted=True)
        self.quoted.feed(content)

    def location(self, m: re.Match) -> None:
        """A ``path:line[:col]: message`` line (pytest, compilers, linters)."""
        s = self.stream
        frame = _Frame(m.group(1), int(m.group(2)), s.prefix, col=int(m.group(3) or 0))
        message = (m.group(4) or "").strip()
        in_func = _IN_FUNC.match(message)
        if in_func:
            # pytest --tb=short: the source line and "E" lines follow.
            frame.func = in_func.group(1)
            s.expect_source(frame, 0)
            self.frame = frame
            self.quoted = None
        elif not message:
            # pytest --tb=long, an outer frame: its ">" line came before.
            frame.source = self.source
        elif _BARE_NAME.match(message) and (self.e_start is not None or self.source is not None):
            # pytest --tb=long, the failing frame: "path:N: AssertionError".
            frame.message = _with_name(message, self.error)
            frame.error = True
        else:
            _generic(frame, message)
        if self.e_start is not None and not in_func:
            # Frames quoted in the "E" lines are inner to this one.
            s.out.insert(self.e_start, frame)
        else:
            s.out.append(frame)
        self.source = self.error = self.e_start = None


def _generic(frame: _Frame, message: str) -> None:
    """A compiler's or linter's ``path:line[:col]: message``: an error when the message
    says so (error, fatal error, assert, an exception's name)."""
    frame.message = message
    frame.error = _ERRORISH.match(message) is not None
    frame.warning = not frame.error and _WARNINGISH.match(message) is not None


def _clean(text: str) -> str:
    """Remove escape sequences and control characters; make every line end "\\n"."""
    if _CONTROL.search(text):
        text = _CLEAN.sub("", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


class _Markers:
    """Finds where the next line that may start something of interest begins.

    Such a line contains ":" or "File", or starts with ">" or "E" (pytest).
    Each marker's next position is remembered until the scan passes it, so
    skipping uninteresting text costs a few ``str.find`` calls in total.
    """

    _NEEDLES = (":", "File", "\n>", "\nE")

    def __init__(self, text: str) -> None:
        self.text = text
        self.next = [-1] * len(self._NEEDLES)

    def line_start(self, pos: int) -> int:
        """Start of the first interesting line at or after ``pos``, or -1."""
        text = self.text
        if text[pos:pos + 1] in (">", "E"):
            return pos
        best = len(text)
        for i, needle in enumerate(self._NEEDLES):
            if self.next[i] < pos:
                found = text.find(needle, pos)
                self.next[i] = found if found >= 0 else len(text)
            if self.next[i] < best:
                best = self.next[i]
        if best >= len(text):
            return -1
        if text[best] == "\n":  # "\n>" or "\nE": the line after the newline
            return best + 1
        return text.rfind("\n", pos, best) + 1 or pos


def _scan(text: str) -> List[_Frame]:
    text = _clean(text)
    out: List[_Frame] = []
    plain = _Stream("", out)
    streams: Dict[str, _Stream] = {"": plain}  # by normalised prefix
    by_raw: Dict[str, _Stream] = {}  # by prefix as printed
    markers = _Markers(text)
    pos, size = 0, len(text)
    while 0 <= pos < size:
        end = text.find("\n", pos)
        if end < 0:
            end = size
        line = text[pos:end] if end - pos <= MAX_LINE else text[pos:pos + MAX_LINE]
        if (
            not plain.busy
            and ":" not in line
            and "File" not in line
            and line[:1] not in (">", "E")
        ):
            pos = markers.line_start(end + 1)
            continue
        pos = end + 1
        stream = plain
        if line[:1] in _PREFIX_START:
            m = _PREFIX.match(line)
            if m:
                raw = m.group()
                known = by_raw.get(raw)
                if known is None and len(by_raw) < _MAX_STREAMS:
                    prefix = " ".join(raw.split()) + " "
                    known = by_raw[raw] = streams.setdefault(prefix, _Stream(prefix, out))
                if known is not None:
                    stream = known
                    line = line[m.end():]
        stream.feed(line)
    return out


def _debugger_free(frames: List[_Frame]) -> List[_Frame]:
    """Frames without a debugger's own (debugpy, pydevd): in each traceback that has some,
    the launcher's frames before the program's first one (runpy, debugpy, pydevd_runpy)
    and, from the first debugger frame the program called on (a breakpoint's wait, a trace
    function), every deeper frame; that frame's exception moves to the program's innermost
    frame.  A traceback that is the debugger's alone (its frames and the standard library
    frames it called) is dropped."""
    groups: Dict[int, List[int]] = {}
    for i, f in enumerate(frames):
        if f.tb is not None:
            groups.setdefault(id(f.tb), []).append(i)
    drop = set()
    for idx in groups.values():
        inside = [_DEBUGGER.search(frames[i].path) is not None for i in idx]
        if not any(inside):
            continue
        lead = 0
        for k, i in enumerate(idx):
            if inside[k]:
                lead = k + 1
            elif not _RUNPY.search(frames[i].path):
                break
        cut = next((k for k in range(lead, len(idx)) if inside[k]), len(idx))
        if all(_STDLIB.search(frames[i].path) for i in idx[lead:cut]):
            cut = lead   # only what the debugger called (a wait in threading): its own
        inner = frames[idx[-1]]
        if lead < cut < len(idx) and inner.error:
            kept = frames[idx[cut - 1]]
            kept.message, kept.error = inner.message, True
        drop.update(idx[:lead] + idx[cut:])
    return [f for i, f in enumerate(frames) if i not in drop] if drop else frames


def _local_path(path: str, to_local: ToLocal, cache: Dict[str, Optional[str]]) -> Optional[str]:
    if path in cache:
        return cache[path]
    local: Optional[str] = None
    if not (path.startswith("<") and path.endswith(">")):
        mapped = to_local(path)
        if isinstance(mapped, str) and mapped:
            local = mapped
    cache[path] = local
    return local


def parse(text: str, to_local: ToLocal) -> list[dict]:
    """Quickfix entries (dicts for setqflist) from a run's output.

    ``to_local`` maps a path as printed remotely (absolute, or relative to the
    remote working directory) to a local absolute path, or returns None when
    the path is outside the project.  It is called once per distinct path and
    should not raise; ``parse`` itself never raises on any text.  See the
    module docstring for the formats understood and the entry layout.
    """
    entries: list[dict] = []
    cache: Dict[str, Optional[str]] = {}
    previous = None
    for frame in _debugger_free(_scan(text)):
        body = frame.body()
        local = _local_path(frame.path, to_local, cache)
        if local is not None:
            shown = (frame.prefix + body).rstrip()
            key = (local, frame.lnum, shown)
            entry = {
                "filename": local,
                "lnum": frame.lnum,
                "col": frame.col,
                "text": shown,
                "type": "E" if frame.error else "W" if frame.warning else "",
            }
        else:
            shown = f"{frame.prefix}{frame.path}:{frame.lnum}: {body}".rstrip()
            key = (None, None, shown)
            entry = {"text": shown, "valid": 0}
        if key != previous:
            entries.append(entry)
        previous = key
    # warnings after the rest (as printed otherwise): :cfirst reaches the error, not a
    # deprecation printed before it
    return [e for e in entries if e.get("type") != "W"] + [e for e in entries if e.get("type") == "W"]


# --------------------------------------------------------------------------- IPython (kernels)

_IPY_CELL = re.compile(r"^\s*Cell In\[(?P<count>\d+)\], line (?P<line>\d+)(?:, in (?P<func>.+))?$")
_IPY_FILE = re.compile(r"^\s*File (?P<path>.+?):(?P<line>\d+)(?:, in (?P<func>.+))?$")
_IPY_ARROW = re.compile(r"^-*>\s*(?P<line>\d+)\s?(?P<source>.*)$")
# IPython 7: "<ipython-input-3-abc> in <module>" / "~/x.py in f(a)", the line in the arrow
_IPY_OLD = re.compile(r"^(?P<path><ipython-input-(?P<count>\d+)-\w+>|\S.*?\.py) in (?P<func>\S.*)$")


def _ipy_func(text: str | None) -> str:
    if not text:
        return "<module>"
    return text.split("(", 1)[0].strip() or "<module>"


def ipython_traceback(chunks: list[str], ename: str, evalue: str, home: str,
                     cells: dict[int, tuple[str, int]]) -> str:
    """IPython's formatted traceback (a kernel's error message's ``traceback`` chunks, with
    ANSI colours) in Python's own format, for :func:`parse`.
    Paths under ``~`` get the remote home; frames of sent code (``Cell In[N]``) get the
    local file and line their code came from (cells: execution count -> (file, first
    line)), else ``<cell N>``."""
    lines = _clean("\n".join(chunks)).splitlines()
    frames: list[list[str]] = []
    syntax: list[str] | None = None

    def where(count: int | None, path: str | None, line: int) -> tuple[str, int]:
        if count is not None:
            if count in cells:
                file, first = cells[count]
                return file, first + line - 1
            return f"<cell {count}>", line
        assert path is not None
        if path.startswith("~/") or path == "~":
            path = home.rstrip("/") + path[1:]
        return path, line

    i = 0
    while i < len(lines):
        ln = lines[i]
        m = _IPY_CELL.match(ln) or _IPY_FILE.match(ln)
        if m:
            count = int(m.group("count")) if "count" in m.groupdict() else None
            path, line = where(count, m.groupdict().get("path"), int(m.group("line")))
            if m.group("func") is None and ename in ("SyntaxError", "IndentationError", "TabError"):
                syntax = [f'  File "{path}", line {line}'] + [x for x in lines[i + 1:] if not x.startswith(ename)]
                break
            source = ""
            j = i + 1
            while j < len(lines) and not (_IPY_CELL.match(lines[j]) or _IPY_FILE.match(lines[j])):
                a = _IPY_ARROW.match(lines[j])
                if a:
                    source = a.group("source").strip()
                j += 1
            frames.append([f'  File "{path}", line {line}, in {_ipy_func(m.group("func"))}'] +
                          ([f"    {source}"] if source else []))
            i = j
            continue
        m = _IPY_OLD.match(ln)
        if m:
            count = int(m.group("count")) if m.group("count") else None
            j, arrow = i + 1, None
            while j < len(lines) and not _IPY_OLD.match(lines[j]):
                a = _IPY_ARROW.match(lines[j])
                if a:
                    arrow = a
                j += 1
            if arrow is not None:
                path, line = where(count, None if count is not None else m.group("path"), int(arrow.group("line")))
                frames.append([f'  File "{path}", line {line}, in {_ipy_func(m.group("func"))}',
                               f"    {arrow.group('source').strip()}"])
            i = j
            continue
        i += 1
    message = f"{ename}: {evalue}" if evalue else ename
    if syntax is not None:
        return "\n".join(syntax + [message]) + "\n"
    out = ["Traceback (most recent call last):"] + [x for f in frames for x in f] + [message]
    return "\n".join(out) + "\n"
