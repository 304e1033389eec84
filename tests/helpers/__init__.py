"""Helpers shared by the test folders: web (a live server, tiny models, samples), formats (files of every format), napari (display checks)."""
