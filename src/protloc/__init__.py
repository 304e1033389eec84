"""protloc: where in a human cell a protein sits, from four-channel fluorescence microscopy images."""

__version__ = "0.1.0"
