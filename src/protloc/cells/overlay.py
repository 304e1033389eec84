"""Cell overlays people look at: outlines over the field, coloured by each cell's top class.

The background is the usual HPA composite (nucleus blue, microtubules red, ER dim yellow, protein
green), dimmed so that the outlines stand out; with per-cell classes a legend names the colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Distinct colours for up to 13 classes (tab20's saturated half, then its light half).
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150),
]
NO_CLASS = (255, 255, 255)


def class_colours(classes) -> dict:
    """Each class's outline colour (RGB), the same in every overlay and on the web page's legend."""
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(classes)}


def _stretch(plane: np.ndarray) -> np.ndarray:
    low, high = np.percentile(plane[::2, ::2], (1.0, 99.8))
    return np.clip((plane - low) / max(float(high - low), 1e-6), 0.0, 1.0)


def field_composite(image: np.ndarray, dim: float = 0.8) -> np.ndarray:
    """uint8 [H, W, 3] of a canonical sample, each channel stretched between percentiles."""
    nucleus, microtubules, er, protein = (_stretch(np.asarray(image[i], dtype=np.float32)) for i in range(4))
    rgb = np.stack([0.6 * microtubules + 0.3 * er, np.maximum(protein, 0.25 * er), 0.8 * nucleus], axis=-1)
    return (np.clip(rgb * dim, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def outline_overlay(
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray | None = None,
    cell_colours: list[tuple[int, int, int]] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """uint8 RGB: cell outlines (white, or ``cell_colours[i]`` for cell i+1), nucleus outlines thin grey."""
    from skimage.segmentation import find_boundaries

    rgb = field_composite(image)
    thickness = thickness or max(1, int(round(max(cells.shape) / 700)))
    edges = find_boundaries(cells, mode="inner")
    if thickness > 1:
        from scipy import ndimage as ndi

        edges = ndi.binary_dilation(edges, iterations=thickness - 1) & (cells > 0)
    if nuclei is not None:
        rgb[find_boundaries(nuclei, mode="inner")] = (150, 150, 150)
    colours = np.array([NO_CLASS] + list(cell_colours or []), dtype=np.uint8)
    if len(colours) <= int(cells.max()):
        colours = np.vstack([colours, np.tile(np.array(NO_CLASS, np.uint8), (int(cells.max()) + 1 - len(colours), 1))])
    rgb[edges] = colours[cells[edges]]
    return rgb


def class_overlay(image, cells, nuclei, top_classes: list[str | None], classes: list[str]) -> np.ndarray:
    """Outlines coloured by each cell's top class (white: no class above its threshold), with a legend."""
    colour_of = class_colours(classes)
    rgb = outline_overlay(image, cells, nuclei, [colour_of.get(c, NO_CLASS) if c else NO_CLASS for c in top_classes])
    present = [c for c in classes if c in set(top_classes)]
    return _with_legend(rgb, [(c, colour_of[c]) for c in present] + [("no class", NO_CLASS)])


def _with_legend(rgb: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(rgb)
    size = max(12, rgb.shape[0] // 45)
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(picture)
    y = size // 2
    for name, colour in entries:
        draw.rectangle([size // 2, y, size // 2 + size, y + size], fill=colour)
        draw.text((size * 2, y - size // 8), name, fill=colour, font=font)
        y += int(size * 1.4)
    return np.asarray(picture)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    from protloc.files import atomic_write

    path = Path(path)
    atomic_write(path, lambda handle: Image.fromarray(rgb).save(handle, format="PNG"))
    return path
