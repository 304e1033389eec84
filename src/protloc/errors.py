"""Errors a user can act on. The CLI prints them as one line and exits with code 2."""


class ProtlocError(Exception):
    """A problem with the user's input (path, file, option), reported without a traceback."""


class DataError(ProtlocError):
    """A data file or folder that cannot be used."""
