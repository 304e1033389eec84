"""protloc's napari plugin (npe2): a reader, a prediction widget and sample data.

Installed with the optional extra ``protloc[napari]``; napari finds ``napari.yaml`` through the
``napari.manifest`` entry point. Nothing here is imported by the rest of protloc, and napari itself
is imported only by the widget, so the reader and sample data stay plain functions over the library.
"""
