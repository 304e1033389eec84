"""The GapNet-PL weights published by the paper's authors: read, import, download.

- ``tensorbundle``: a reader for TensorFlow TensorBundle checkpoints (no TensorFlow needed)
- ``importer``: maps the checkpoint onto protloc's ``gapnet-pl`` and writes a protloc model file
- ``fetch``: downloads the published files, checks them, imports them into the user cache;
  ``resolve_pretrained()`` is what the model name ``pretrained`` means to other commands
"""

from protloc.pretrained.fetch import default_cache_file, fetch_pretrained, resolve_pretrained
from protloc.pretrained.importer import CHECKPOINT_CHANNEL_ORDER, import_checkpoint
from protloc.pretrained.tensorbundle import TensorBundle, read_tensor_bundle

__all__ = [
    "CHECKPOINT_CHANNEL_ORDER",
    "TensorBundle",
    "default_cache_file",
    "fetch_pretrained",
    "import_checkpoint",
    "read_tensor_bundle",
    "resolve_pretrained",
]
