"""Side-by-side figures: real HPA fields (Kaggle 2018, ../shared/real-hpa/kaggle2018-train-101) of a
class next to synthetic fields of the same class, both shown at the generator's pixel size.

    python tools/realism_figures.py ../shared/real-hpa/kaggle2018-train-101 docs/realism

One JPEG per class (PNG of camera noise is large): top row real fields (composite, then the protein channel), bottom row synthetic.
Used to redraw the generator by eye; no number from the real set enters the generator.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from protloc.data.formats import read
from protloc.data.synth import PIXEL_SIZE_UM, render_sample
from protloc.data.pixel_size import KAGGLE2018_PIXEL_SIZE_UM, rescale
from protloc.evaluation.realism import read_real_set
from protloc.labels import HPA13

TILE = 256


def stretch(plane: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(plane, 1), np.percentile(plane, 99.7)
    return np.clip((plane - lo) / max(hi - lo, 1e-6), 0, 1)


def tiles(image: np.ndarray) -> np.ndarray:
    """Composite (red = microtubules, green = protein, blue = nucleus, ER as yellow) and protein alone."""
    n, mt, er, pr = (stretch(p) for p in image[:, :TILE, :TILE])
    composite = np.stack([np.clip(mt * 0.7 + er * 0.4, 0, 1), np.clip(pr + er * 0.3, 0, 1), n], -1)
    grey = np.stack([pr] * 3, -1)
    return np.concatenate([composite, np.ones((TILE, 4, 3)), grey], 1)


def main(real_root: str, out: str, per_class: int = 2) -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    real = read_real_set(real_root)
    factor = KAGGLE2018_PIXEL_SIZE_UM / PIXEL_SIZE_UM
    classes = sys.argv[3].split(",") if len(sys.argv) > 3 else list(HPA13.classes)
    for name in classes:
        k = HPA13.index(name)
        picks = [i for i in range(len(real.ids)) if real.labels[i, k] > 0][:per_class]
        rows = []
        real_tiles = [tiles(rescale(read(real.sources[i]).image, factor)) for i in picks]
        synth_tiles = [tiles(render_sample(np.random.default_rng([99, j]), [name], 320, 320).astype(np.float32))
                       for j in range(per_class)]
        blank = np.ones_like(synth_tiles[0])
        for row in (real_tiles or [blank], synth_tiles):
            row = row + [blank] * (per_class - len(row))
            rows.append(np.concatenate([np.concatenate([t, np.ones((TILE, 8, 3))], 1) for t in row], 1))
        figure = np.concatenate([rows[0], np.ones((8, rows[0].shape[1], 3)), rows[1]], 0)
        slug = name.lower().replace(" ", "-")
        Image.fromarray((figure * 255).astype(np.uint8)).save(out_dir / f"real-vs-synthetic-{slug}.jpg", quality=85)
        print(f"{name}: {len(picks)} real fields -> {out_dir / f'real-vs-synthetic-{slug}.jpg'}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
