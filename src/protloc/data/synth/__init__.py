"""Synthetic HTI fields: the embedded default data set, with per-cell truth.

Each sample is a field of several cells in four channels (nucleus, microtubules, ER, protein), drawn
at ``PIXEL_SIZE_UM`` µm per pixel. The three reference channels always show the cells' nuclei
(textured ellipses with dark nucleoli), a microtubule network radiating from the centrosome beside
the nucleus, and a reticular ER densest around the nucleus. The protein channel shows the
compartments named by the sample's labels, each with its own morphology (``COMPARTMENT_DRAWERS``).

One module per concern: ``labels`` (which classes a field has), ``field`` (the cell layout),
``canvas`` (drawing primitives), ``references`` (the reference channels), ``compartments`` (the
protein's morphology per class), ``render`` (a whole field with its camera and per-cell truth),
``dataset`` (the files on disk).
"""

from protloc.data.synth.compartments import COMPARTMENT_DRAWERS, DIFFUSE_LEVEL, PUNCTA_LEVEL
from protloc.data.synth.dataset import (CELLS_FILE, CELLS_HEADER, ID_PREFIX, MASKS_FOLDER, MAX_SAMPLES,
                                        default_workers, draw_field, draw_sample, generate_dataset,
                                        sample_id, sample_rng, write_tiff)
from protloc.data.synth.field import CELL_RADIUS, MITOTIC_PROB, PIXEL_SIZE_UM, Field, make_field, smooth_noise
from protloc.data.synth.labels import CLASS_WEIGHTS, LABEL_COUNT_PROBS, sample_labels
from protloc.data.synth.references import References, draw_references
from protloc.data.synth.render import (EXPRESSION_PROB, MAX_SIZE, MIN_SIZE, CellTruth, RenderedField,
                                       render_field, render_sample)

__all__ = [
    "CELLS_FILE", "CELLS_HEADER", "CELL_RADIUS", "CLASS_WEIGHTS", "COMPARTMENT_DRAWERS", "CellTruth",
    "DIFFUSE_LEVEL", "EXPRESSION_PROB", "Field", "ID_PREFIX", "LABEL_COUNT_PROBS", "MASKS_FOLDER", "MAX_SAMPLES",
    "MAX_SIZE", "MIN_SIZE", "MITOTIC_PROB", "PIXEL_SIZE_UM", "PUNCTA_LEVEL", "References", "RenderedField",
    "default_workers", "draw_field", "draw_references", "draw_sample", "generate_dataset", "make_field",
    "render_field", "render_sample", "sample_id", "sample_labels", "sample_rng", "smooth_noise", "write_tiff",
]
