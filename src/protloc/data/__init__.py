"""The data layer: readers of HTI data sets, the scanned index, splits, crops and patches.

Every reader converts a sample once to the canonical in-memory form: a float32 array
[4, height, width] with the channels in ``CHANNELS`` order (nucleus, microtubules, ER, protein),
holding the raw intensities (not normalised; ``patches.normalize`` does that per crop or image).
``CHANNELS`` lives in ``protloc.data.channels``.
"""
