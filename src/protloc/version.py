"""The one place protloc's version is written (``pyproject.toml`` reads it; ``protloc.__version__``
is this). A module of its own so that the library's modules can state their version without
importing the package root, which is the public facade above them (``protloc.load_model``)."""

__version__ = "0.2.1"
