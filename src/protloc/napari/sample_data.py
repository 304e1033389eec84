"""napari sample data (File > Open Sample > protloc): both work offline.

- ``real_hpa_field``: a real Human Protein Atlas field (antibody 57639, a nuclear protein), shipped in
  the package as the Kaggle-format 512x512 copy of ../shared/real-hpa/kaggle-png, with its CC BY-SA 3.0
  credit (``data/PROVENANCE.md``). Shipped rather than looked up beside the repository because an
  installed plugin has no repository beside it; the full 2048x2048 field stays in ../shared and opens
  with the reader (``napari ../shared/real-hpa/hpa-download``).
- ``synthetic_field``: one field of protloc's synthetic generator (``protloc synth``), its true
  classes in the layer names' sample id.
"""

from __future__ import annotations

from pathlib import Path

from protloc.data.formats import discover, read
from protloc.napari.reader import channel_layers

DATA_DIR = Path(__file__).parent / "data"
HPA_CREDIT = "Human Protein Atlas (www.proteinatlas.org), CC BY-SA 3.0"
# A field of the generator's default data set (seed 0) with three classes, the nucleus among them.
SYNTHETIC_SEED, SYNTHETIC_INDEX, SYNTHETIC_SIZE = 0, 1, 512


def real_hpa_field() -> list[tuple]:
    """The real HPA field shipped with the plugin, one layer per channel, credit in the metadata."""
    (entry,) = discover([DATA_DIR])
    return channel_layers(read(entry).image, "HPA 57639_1283_B2_10", source=str(DATA_DIR),
                          extra={"credit": HPA_CREDIT})


def synthetic_field() -> list[tuple]:
    """A 512x512 synthetic field from protloc's generator; its true classes are in the sample id."""
    from protloc.data.synth import draw_sample
    from protloc.labels import HPA13

    labels, image = draw_sample(SYNTHETIC_SEED, SYNTHETIC_INDEX, SYNTHETIC_SIZE, SYNTHETIC_SIZE)
    truth = ", ".join(HPA13.names(labels))
    return channel_layers(image.astype("float32"), f"synthetic: {truth}", source="protloc.data.synth",
                          extra={"true_classes": HPA13.names(labels)})
