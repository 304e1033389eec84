"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


def printable(text: str) -> str:
    """``text`` with undecodable file-name bytes (lone surrogates, e.g. ``'\\udcff'``) written as ``\\xff``,
    so that a message naming such a file can be printed, logged or saved as UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # surrogates that did not come from undecodable bytes
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


class ProtlocError(Exception):
    """A problem with the user's input (path, file, option), reported without a traceback."""

    def __init__(self, *args) -> None:
        super().__init__(*(printable(arg) if isinstance(arg, str) else arg for arg in args))


class DataError(ProtlocError):
    """A data file or folder that cannot be used."""
