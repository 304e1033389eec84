"""Image-level labels of a synthetic field: which compartments hold the protein."""

from __future__ import annotations

import numpy as np

from protloc.labels import HPA13, LabelSet

# Relative class frequencies, unbalanced like the paper's Appendix Figure 6: nucleus, cytosol,
# nucleoli, plasma membrane and vesicles are common; nuclear membrane, intermediate filaments,
# centrosome, microtubules and actin filaments are rare. Kept "slightly unbalanced" (largest/smallest
# about 3.5) so that every class has enough positives in a data set of a few hundred samples.
CLASS_WEIGHTS: dict[str, float] = {
    "Actin filaments": 4.5,
    "Centrosome": 5.0,
    "Cytosol": 13.0,
    "Endoplasmic reticulum": 6.0,
    "Golgi apparatus": 7.0,
    "Intermediate filaments": 5.0,
    "Microtubules": 4.5,
    "Mitochondria": 7.0,
    "Nuclear membrane": 4.5,
    "Nucleoli": 10.0,
    "Nucleus": 16.0,
    "Plasma membrane": 9.0,
    "Vesicles": 9.0,
}
# Number of classes per sample: about half the samples are multi-label (as in the paper).
LABEL_COUNT_PROBS = (0.50, 0.33, 0.13, 0.04)


def sample_labels(rng: np.random.Generator, label_set: LabelSet = HPA13) -> tuple[int, ...]:
    """Draw a sorted tuple of class indices: 1 to 4 classes, weighted by ``CLASS_WEIGHTS``."""
    weights = np.array([CLASS_WEIGHTS[name] for name in label_set.classes], dtype=np.float64)
    count = 1 + int(rng.choice(len(LABEL_COUNT_PROBS), p=LABEL_COUNT_PROBS))
    chosen = rng.choice(len(weights), size=count, replace=False, p=weights / weights.sum())
    return tuple(sorted(int(c) for c in chosen))
