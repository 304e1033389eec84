"""protloc: where in a human cell a protein sits, from four-channel fluorescence microscopy images."""

# The version is written once, in protloc/version.py (pyproject.toml reads it there).
# Bumping rule: CHANGELOG.md ("Versions").
from protloc.version import __version__

__all__ = ["__version__", "load_model"]


def __getattr__(name: str):
    # Lazy, so that `protloc --help` does not pay for importing torch.
    if name == "load_model":
        from protloc.inference.predictor import load_model

        return load_model
    raise AttributeError(f"module 'protloc' has no attribute {name!r}")
