"""A cell's answer: its own prediction, its image's, and whether it shows the protein at all.

Three pieces of evidence per cell (``CellPredictions`` holds them):

- the cell's own probabilities (GapNet-PL's head on the cell's masked feature averages): tell the
  cells of one field apart;
- its image's probabilities (the whole field through the network): the field's many cells give a
  surer answer on sparse and fibrous patterns than one cell's average does, but every cell of a
  field gets the same one;
- its protein signal: its mean protein intensity above the slide's background, (a) relative to the
  field's strongest cell (``expression``, 0..1) and (b) in units of the background's noise
  (``signal_to_noise``, the same scale in every field). A cell that does not express the protein
  shows no location at all (the HPA single-cell challenge's "Negative"); neither prediction knows
  that, since the network normalises every image and reads patterns, not amounts.

``combined`` (the default answer) multiplies them:

    base[c]  = own[c] ** w[c] * image[c] ** (1 - w[c])
    score[c] = gate * sigmoid(logit(base[c]) + v[c] * (logit(own[c]) - field mean of logit(own[c])))
    gate     = min(1, expression / EXPRESSION_FULL) * signal_gate(signal_to_noise)

``signal_gate`` is the absolute "no signal" rule: 0 below ``SIGNAL_FLOOR`` times the background's
noise (the cell cannot be told from the slide), 1 from ``SIGNAL_FULL`` on, linear between. The
relative gate alone cannot say "no signal": in a field where no cell expresses, the brightest
background-level cell still has expression 1. ``w`` is ``OWN_WEIGHT_FILLING`` for the classes
that fill a compartment (``FILLING_CLASSES``) and ``OWN_WEIGHT_OTHER`` for the others; ``v``
likewise ``RELATIVE_WEIGHT_FILLING`` and ``RELATIVE_WEIGHT_OTHER`` (the cell's own evidence relative
to its field's other cells; a field of one cell keeps ``base``).

The constants are chosen on real cells: the selection half of mosaics tiled from real labelled HPA
fields (``protloc.bench.cells_real``, ``protloc.bench.cells_real_select``), among the points that
keep the synthetic per-cell mAP at or above the image baseline; docs/single-cells.md has the figures.
(They were first chosen on synthetic cells alone, where they gave the cell's own evidence weight 0:
on real fields every cell then got its image's answer.)

The other answers stay available (``protloc cells --per-cell``): ``own``, ``image`` (the weak
baseline: every cell gets its image's probabilities) and ``geometric-mean`` (own and image, no gate).
"""

from __future__ import annotations

import numpy as np

from protloc.errors import ProtlocError

SCORINGS = ("combined", "own", "image", "geometric-mean")
DEFAULT_SCORING = "combined"
# --- chosen constants: written by `python -m protloc.bench.cells --select ... --write-constants` ---
# Chosen on real cells (python -m protloc.bench.cells_real_select ... --write-constants): the selection
# half of the mosaics of kaggle2018-train-101, published weights: per-cell mAP 0.4212, accuracy 0.6496
# there; synthetic per-cell mAP 0.4692 (seed 101, image baseline 0.4654). docs/single-cells.md.
EXPRESSION_FULL = 0.2
OWN_WEIGHT_FILLING = 0.5
OWN_WEIGHT_OTHER = 0.5
RELATIVE_WEIGHT_FILLING = 0.0
RELATIVE_WEIGHT_OTHER = 0.0
# --- end of chosen constants ---
# The "no signal" rule (absolute, the same in every field): a cell whose protein signal above the
# slide's background is below SIGNAL_FLOOR times the background's noise shows no protein (gate 0);
# from SIGNAL_FULL on it counts fully; linear between. Chosen by ``protloc.bench.cells_real``'s
# selection (docs/single-cells.md).
SIGNAL_FLOOR = 1.0
SIGNAL_FULL = 3.0
# Classes whose pattern fills a compartment every cell has (one cell's average samples it well).
FILLING_CLASSES = frozenset({"Cytosol", "Nucleus", "Endoplasmic reticulum", "Mitochondria"})
# The canonical sample's protein channel (nucleus, microtubules, ER, protein).
PROTEIN_CHANNEL = 3

DESCRIPTIONS = {
    "combined": "signal gates (relative to the field, and absolute: no signal) x own^w x image^(1-w) "
                "(protloc.cells.scoring)",
    "own": "the cell's own",
    "image": "its image's (every cell of an image alike)",
    "geometric-mean": "geometric mean of the cell's and its image's",
}


def check_scoring(name: str) -> str:
    if name not in SCORINGS:
        raise ProtlocError(f"unknown per-cell answer {name!r}: choose one of {', '.join(SCORINGS)}")
    return name


def protein_signal(protein: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray,
                   boxes: list | None = None) -> tuple[np.ndarray, float, float]:
    """(each cell's mean protein intensity above the slide's background [n], the background, its noise).

    Background: the median of the protein channel outside every cell (on every other pixel of every
    other row; the 1st percentile of the channel where the cells cover the field). Noise: the robust
    spread of those background pixels (1.4826 x their median absolute deviation, the standard
    deviation of Gaussian noise), at least one step of the channel's values (8-bit data: a flat
    background has no spread but is still quantised). ``boxes``: the cells' bounding boxes
    (``scipy.ndimage.find_objects``) when known.
    """
    from scipy import ndimage as ndi

    sample, outside = protein[::2, ::2], labels[::2, ::2] == 0
    pixels = sample[outside] if outside.any() else sample[sample <= np.percentile(sample, 1.0)]
    background = float(np.median(pixels) if outside.any() else np.percentile(sample, 1.0))
    spread = 1.4826 * float(np.median(np.abs(pixels - background))) if pixels.size else 0.0
    values = np.unique(sample[:: max(1, sample.shape[0] // 64), :: max(1, sample.shape[1] // 64)])
    step = float(np.min(np.diff(values))) if len(values) > 1 else 1.0
    noise = max(spread, step, 1e-12)
    if not len(cell_ids):
        return np.zeros(0), background, noise
    boxes = ndi.find_objects(labels) if boxes is None else boxes
    means = np.empty(len(cell_ids))
    for k, cell_id in enumerate(cell_ids):
        box = boxes[int(cell_id) - 1]
        means[k] = protein[box][labels[box] == cell_id].mean(dtype=np.float64)
    return means - background, background, noise


def relative_expression(protein: np.ndarray, labels: np.ndarray, cell_ids: np.ndarray,
                        boxes: list | None = None) -> np.ndarray:
    """Each cell's mean protein intensity above the background, over the field's largest such value.

    Values in [0, 1]; 1 for the strongest cell; all 1 when no cell rises above the background
    (nothing to tell them apart by: ``signal_to_noise`` says whether there is any signal at all).
    ``boxes``: the cells' bounding boxes (``scipy.ndimage.find_objects``) when known.
    """
    if not len(cell_ids):
        return np.zeros(0, np.float32)
    return expression_of(protein_signal(protein, labels, cell_ids, boxes)[0])


def expression_of(signal: np.ndarray) -> np.ndarray:
    """``relative_expression`` from the cells' signals above the background (``protein_signal``)."""
    signal = np.maximum(np.asarray(signal, np.float64), 0.0)
    if not len(signal):
        return np.zeros(0, np.float32)
    strongest = signal.max()
    if not strongest > 0:
        return np.ones(len(signal), np.float32)
    return (signal / strongest).astype(np.float32)


def own_weights(classes) -> np.ndarray:
    return np.array([OWN_WEIGHT_FILLING if name in FILLING_CLASSES else OWN_WEIGHT_OTHER for name in classes],
                    np.float64)


def relative_weights(classes) -> np.ndarray:
    return np.array([RELATIVE_WEIGHT_FILLING if name in FILLING_CLASSES else RELATIVE_WEIGHT_OTHER
                     for name in classes], np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    # kept finite: a saturated head gives exact 0 and 1 in float32
    p = np.clip(p, 1e-6, 1.0 - 1e-6)
    return np.log(p) - np.log1p(-p)


def signal_gate(signal_to_noise, floor: float | None = SIGNAL_FLOOR, full: float = SIGNAL_FULL) -> np.ndarray:
    """0 for a cell without protein signal (below ``floor`` x the background's noise), 1 from
    ``full`` on, linear between; all 1 with ``floor`` None (no absolute rule)."""
    snr = np.asarray(signal_to_noise, np.float64)
    if floor is None:
        return np.ones_like(snr)
    return np.clip((snr - floor) / max(full - floor, 1e-9), 0.0, 1.0)


def combine(own: np.ndarray, image: np.ndarray, expression: np.ndarray, classes, *,
            expression_full: float | None = EXPRESSION_FULL, weights: np.ndarray | None = None,
            relative: np.ndarray | None = None, signal_to_noise: np.ndarray | None = None,
            signal_floor: float | None = SIGNAL_FLOOR, signal_full: float = SIGNAL_FULL) -> np.ndarray:
    """The default per-cell answer [n, classes] of ONE field's cells (module docstring: the relative
    term compares each cell with the other cells passed together); ``expression_full`` None: no gate
    relative to the field; ``signal_to_noise`` None or ``signal_floor`` None: no absolute gate."""
    weights = own_weights(classes) if weights is None else np.asarray(weights, np.float64)
    relative = relative_weights(classes) if relative is None else np.asarray(relative, np.float64)
    own = np.clip(np.asarray(own, np.float64), 1e-12, 1.0)
    image = np.clip(np.asarray(image, np.float64), 1e-12, 1.0)[None, :]
    expression = np.asarray(expression, np.float64)
    gate = np.ones_like(expression) if expression_full is None else np.minimum(1.0, expression / expression_full)
    if signal_to_noise is not None:
        gate = gate * signal_gate(signal_to_noise, signal_floor, signal_full)
    gate = gate[:, None]
    base = own**weights * image ** (1.0 - weights)
    if len(own) and np.any(relative != 0):
        own_logit = _logit(own)
        shift = relative * (own_logit - own_logit.mean(axis=0, keepdims=True))
        base = 1.0 / (1.0 + np.exp(-(_logit(base) + shift)))
    return (gate * base).astype(np.float32)


def cell_scores(predictions, classes, scoring: str = DEFAULT_SCORING) -> np.ndarray:
    """Per-cell answers [n, classes] of one image's ``CellPredictions`` by the named scoring."""
    check_scoring(scoring)
    own = predictions.probabilities
    if scoring == "own":
        return own
    if scoring == "image":
        return np.repeat(predictions.image_probabilities[None, :], len(own), axis=0).astype(np.float32)
    if scoring == "geometric-mean":
        return np.sqrt(own * predictions.image_probabilities[None, :]).astype(np.float32)
    return combine(own, predictions.image_probabilities, predictions.expression, classes,
                   signal_to_noise=getattr(predictions, "signal_to_noise", None))
