"""Text from files, made safe to print on a terminal (CWE-150).

A model file chooses its layer names, class names and the messages its loaders raise; a
name holding terminal control sequences (ESC ] to set the window title, ESC [2J to clear
the screen, BEL, a C1 CSI byte, a right-to-left override that reorders what the user
reads) would make the user's terminal act on them when printed. `escaped` writes every
such character as a visible escape (`\\x1b`, `\\u202e`); the tables keras_bn prints
escape their cells with it, and the command line passes everything it writes through
`EscapingStream`, which escapes all but the layout characters its own progress lines use.
"""

import io
import unicodedata

#: Layout characters keras_bn's own output uses (lines, tabs, progress rewrites).
LAYOUT = "\n\t\r\b"


def _unsafe(character: str, keep: str) -> bool:
    if character in keep:
        return False
    # Cc: C0 and C1 controls and DEL; Cf: format characters (bidi overrides, zero-width)
    return unicodedata.category(character) in ("Cc", "Cf")


def _escape(character: str) -> str:
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escaped(text: object, keep: str = "") -> str:
    """`str(text)` with every control or format character outside `keep` written as a
    visible escape (`\\x1b`, `\\x07`, `\\u202e`), and backslashes left as they are."""
    text = str(text)
    if all(c.isprintable() or c in keep for c in text):
        return text
    return "".join(_escape(c) if _unsafe(c, keep) else c for c in text)


class EscapingStream(io.TextIOBase):
    """A text stream writing to `stream` with every control character escaped except
    the layout ones (`LAYOUT`): whatever a model file put into a name, a class name or
    an error message reaches the terminal as text, never as a command."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(escaped(text, keep=LAYOUT))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]  # read-only: the stream's
        return getattr(self.stream, "encoding", "utf-8")
