"""The GapNet-PL weights published by the paper's authors: read, import, download.

- ``tensorbundle``: a reader for TensorFlow TensorBundle checkpoints (no TensorFlow needed)
- ``importer``: maps the checkpoint onto protloc's ``gapnet-pl`` and writes a protloc model file
- ``fetch``: downloads the published files, checks them, imports them into the user cache;
  ``resolve_pretrained()`` is what the model name ``pretrained`` means to other commands
"""
