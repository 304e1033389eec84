"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


# Control characters (a newline in a file name is legal on Linux) would break a one-line message or a
# listing line: written as escapes, as Python writes them.
_CONTROL_ESCAPES = {i: f"\\x{i:02x}" for i in (*range(32), 127)} | {9: "\\t", 10: "\\n", 13: "\\r"}


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (lone surrogates, e.g. ``'\\udcff'``) written as ``\\xff``
    and control characters as ``\\n``, ``\\x1b``, ..., so that a message or an id naming such a file is
    one line that can be printed, logged or saved as UTF-8."""
    if text.isprintable():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
            text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.translate(_CONTROL_ESCAPES)


def _worker_reason(text: str) -> str:
    """torch's DataLoader re-raises a worker's exception as the same type with the worker's whole
    traceback as its message; the user's reason is the last line, after the exception's name."""
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


class ProtlocError(Exception):
    """A problem with the user's input (path, file, option), reported without a traceback."""

    def __init__(self, *args) -> None:
        super().__init__(*(printable(_worker_reason(arg)) if isinstance(arg, str) else arg for arg in args))


class DataError(ProtlocError):
    """A data file or folder that cannot be used."""
