"""Text from outside, made safe to show: control characters escaped, lengths capped. Pure.

A task's stderr, a failure message from the service, a blob name: any of these can hold terminal escape
sequences (`ESC[2J` clears the screen, `ESC]52;...` writes the clipboard, a carriage return hides what
came before on the line), bidirectional overrides that show text in another order than it is, or simply
50 MB on one line (BatchExplorer#457). Everything such text passes through before it reaches a terminal, a
log line or the summary goes through these functions: the log subscriber, the run's summary, the progress
display, `batchpilot status` and `batchpilot logs`.

    escape_controls("red\x1b[31m")          -> 'red\\x1b[31m'
    one_line("a\nb", 80)                   -> 'a\\nb'
    cap("x" * 5000, 100)                   -> 'xxx... (4,900 more characters)'
    tail_text(b"...50 MB...", lines=10)    -> the last 10 lines, each capped, escaped
"""

from __future__ import annotations

import re

# How many bytes of a task's stdout/stderr are read for a tail (a byte range: the rest is never read).
TAIL_BYTES = 4096
# The longest line of a tail that is shown whole, in characters.
LINE_CHARS = 300
# The longest value a log field, a summary line or a one-line reason may have, in characters.
FIELD_CHARS = 2000

# C0 controls but tab and newline, DEL, C1 controls; bidirectional embeddings, overrides and isolates
# (the "Trojan Source" characters), and the line and paragraph separators some terminals honour.
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_CONTROLS_AND_BREAKS = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _escaped(match: re.Match[str]) -> str:
    return _escape(match.group())


def escape_controls(text: str) -> str:
    """`text` with every control character that could act on a terminal written out as an escape (`\\x1b`,
    `\\r`, `\\u202e`); newlines and tabs are kept. Unbounded: see `safe_text` for a capped one."""
    return _CONTROLS.sub(_escaped, text)


def cap(text: str, limit: int = FIELD_CHARS) -> str:
    """`text` cut to at most `limit` characters, saying how many were left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text) - limit:,} more characters)"


def _bounded_escape(text: str, limit: int, controls: re.Pattern[str]) -> str:
    """`text` escaped, then cut so that what is shown is at most `limit` characters (escapes included)."""
    if len(text) <= limit and controls.search(text) is None:
        return text
    shown: list[str] = []
    used = 0
    for char in text[:limit]:
        piece = _escape(char) if controls.match(char) else char
        if used + len(piece) > limit:
            break
        shown.append(piece)
        used += len(piece)
    rest = len(text) - len(shown)
    return "".join(shown) + (f"... ({rest:,} more characters)" if rest else "")


def one_line(text: str, limit: int = FIELD_CHARS) -> str:
    """`text` as one safe line of at most about `limit` characters: every control character, newlines
    included, escaped."""
    return _bounded_escape(text, limit, _CONTROLS_AND_BREAKS)


def safe_text(text: str, limit: int = FIELD_CHARS) -> str:
    """`text` in at most about `limit` characters, control characters escaped, newlines kept."""
    return _bounded_escape(text, limit, _CONTROLS)


def decode(data: bytes) -> str:
    """Bytes from a task as text: UTF-8, undecodable bytes replaced (never an error)."""
    return data.decode("utf-8", errors="replace")


def tail_text(data: bytes, *, lines: int = 10, line_chars: int = LINE_CHARS, partial: bool = False) -> str:
    """The last `lines` lines of `data` (the end of a task's output), each escaped and capped at
    `line_chars` characters. `partial`: `data` is the end of a longer file, so its first line is cut and is
    dropped when there are others."""
    # Lines end at newlines only (a CRLF's CR dropped): a lone carriage return, which would hide what
    # came before it on a terminal, stays in its line, escaped.
    found = [line.removesuffix("\r") for line in decode(data).rstrip("\r\n").split("\n")]
    if partial and len(found) > 1:
        found = found[1:]
    kept = found[-lines:] if lines > 0 else []
    return "\n".join(one_line(line, line_chars) for line in kept)


# The most items of a list a log field shows (a run's 10,000 failed task ids, say); the rest are counted.
MAX_ITEMS = 100


def bounded(value: object, *, chars: int = FIELD_CHARS, items: int = MAX_ITEMS) -> object:
    """A log field's value made safe: strings capped and escaped (newlines kept: JSON and the console show
    them escaped or indented), lists and tuples cut to `items` entries plus a count of the rest, dicts
    bounded value by value; anything else as is."""
    if isinstance(value, str):
        return safe_text(value, chars)
    if isinstance(value, list | tuple):
        shown: list[object] = [bounded(item, chars=chars, items=items) for item in value[:items]]
        if len(value) > items:
            shown.append(f"... and {len(value) - items:,} more")
        return shown
    if isinstance(value, dict):
        return {key: bounded(item, chars=chars, items=items) for key, item in value.items()}
    return value
