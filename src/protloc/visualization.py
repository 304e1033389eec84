"""The one picture module: every image protloc draws for people to look at, and the one PNG writer.

Channel composites, single channels, expert views, localisation-map overlays, cell outlines coloured
by class with their legend, display-size shrinking; ``protloc predict --maps``, ``protloc cells``,
the expert study, the platform's pictures and the bioimage.io cover all draw through here, so a
field looks the same everywhere.

The drawing functions take the canonical float32 [4, H, W] sample (nucleus, microtubules, ER,
protein) and return uint8 arrays; contrast is stretched per channel between low and high
percentiles so that dim 16-bit and bright 8-bit data look alike. ``save_png(path, picture)`` writes
atomically (``protloc.files``): a reader never sees half a PNG.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from protloc.data.channels import CHANNELS

NUCLEUS, MICROTUBULES, ER, PROTEIN = range(4)
DISPLAY_SIZE = 1024  # the longest side of a picture shown on a page, unless full resolution is asked for
# Distinct colours for up to 13 classes (tab20's saturated half, then its light half).
_PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
    (255, 152, 150),
]
NO_CLASS = (255, 255, 255)


def stretch(channel: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Contrast-stretch one channel to [0, 1] between two percentiles."""
    channel = np.asarray(channel, dtype=np.float32)
    lo, hi = np.percentile(channel, [low, high])
    if hi <= lo:
        return np.zeros_like(channel)
    return np.clip((channel - lo) / (hi - lo), 0.0, 1.0)


def _to_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def channel_image(image: np.ndarray, channel: int | str) -> np.ndarray:
    index = CHANNELS.index(channel) if isinstance(channel, str) else int(channel)
    return _to_uint8(stretch(image[index]))


def composite(image: np.ndarray, dim: float = 1.0) -> np.ndarray:
    """Protein in green over the references: microtubules red, ER dim red-yellow, nucleus blue (HPA style).

    ``dim`` < 1 darkens it (under cell outlines, so that they stand out)."""
    nucleus, microtubules, er, protein = (stretch(image[i]) for i in range(4))
    red = 0.65 * microtubules + 0.35 * er
    green = np.maximum(protein, 0.25 * er)
    blue = 0.8 * nucleus
    return _to_uint8(np.stack([red, green, blue], axis=-1) * dim)


def two_colour(reference: np.ndarray | None, protein: np.ndarray) -> np.ndarray:
    """Protein in green over one reference channel in red (paper Appendix Figure 7)."""
    green = stretch(protein)
    red = stretch(reference) if reference is not None else np.zeros_like(green)
    return _to_uint8(np.stack([red, green, np.zeros_like(green)], axis=-1))


def expert_views(image: np.ndarray) -> dict[str, np.ndarray]:
    """The four images the paper's expert chose: the protein alone, and over each reference channel."""
    protein = image[PROTEIN]
    return {
        "protein": two_colour(None, protein),
        "protein+nucleus": two_colour(image[NUCLEUS], protein),
        "protein+microtubules": two_colour(image[MICROTUBULES], protein),
        "protein+er": two_colour(image[ER], protein),
    }


def overlay_map(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6,
                base: np.ndarray | None = None) -> np.ndarray:
    """A localisation map ([H, W] in [0, 1]) as a heat overlay on a dimmed grey composite.

    ``base``: the image's ``composite`` when the caller has it already (several maps of one image).
    """
    from matplotlib import colormaps

    base = (composite(image) if base is None else base).astype(np.float32) / 255.0
    grey = base.mean(axis=-1, keepdims=True) * 0.6
    heat = colormaps["inferno"](np.clip(heatmap, 0.0, 1.0))[..., :3].astype(np.float32)
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    return _to_uint8(grey * (1.0 - weight) + heat * weight)


def display_factor(height: int, width: int, full: bool = False) -> int:
    """The block size that brings a picture's longest side to at most ``DISPLAY_SIZE`` (1 for ``full``)."""
    return 1 if full else max(1, math.ceil(max(height, width) / DISPLAY_SIZE))


def shrink(array: np.ndarray, factor: int) -> np.ndarray:
    """Block means over ``factor``² pixels of the last two axes (edges cropped to whole blocks)."""
    if factor == 1:
        return array
    h, w = array.shape[-2] // factor * factor, array.shape[-1] // factor * factor
    cropped = array[..., :h, :w]
    return cropped.reshape(*array.shape[:-2], h // factor, factor, w // factor, factor).mean(axis=(-3, -1))


# -- cells ------------------------------------------------------------------------------------------
def class_colours(classes) -> dict:
    """Each class's outline colour (RGB), the same in every overlay and on the web page's legend."""
    return {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(classes)}


def outline_edges(cells: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """bool [H, W]: the inner outline of every cell of a label image, ``thickness`` pixels wide
    (default: 1 px per 700 px of the longer side)."""
    from skimage.segmentation import find_boundaries

    thickness = thickness or max(1, int(round(max(cells.shape) / 700)))
    edges = find_boundaries(cells, mode="inner")
    if thickness > 1:
        from scipy import ndimage as ndi

        edges = ndi.binary_dilation(edges, iterations=thickness - 1) & (cells > 0)
    return edges


def outline_picture(cells: np.ndarray, thickness: int | None = None) -> np.ndarray:
    """uint8 RGBA [H, W, 4]: the cells' outlines in white, transparent elsewhere (laid over a view)."""
    picture = np.zeros((*cells.shape, 4), dtype=np.uint8)
    picture[outline_edges(cells, thickness)] = (255, 255, 255, 230)
    return picture


def outline_overlay(
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray | None = None,
    cell_colours: list[tuple[int, int, int]] | None = None,
    thickness: int | None = None,
) -> np.ndarray:
    """uint8 RGB: cell outlines (white, or ``cell_colours[i]`` for cell i+1), nucleus outlines thin
    grey, over the dimmed composite."""
    from skimage.segmentation import find_boundaries

    rgb = composite(image, dim=0.8)
    edges = outline_edges(cells, thickness)
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
    return with_legend(rgb, [(c, colour_of[c]) for c in present] + [("no class", NO_CLASS)])


def with_legend(rgb: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
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


# -- the one PNG writer -----------------------------------------------------------------------------
def save_png(path: str | Path, picture: np.ndarray) -> Path:
    """Write a uint8 picture ([H, W], [H, W, 3] or [H, W, 4]) as PNG, atomically; returns the path."""
    from PIL import Image

    from protloc.files import atomic_write

    path = Path(path)
    image = Image.fromarray(np.ascontiguousarray(picture))
    # zlib level 1: about twice as fast to encode as the default 6 on microscopy content, files ~7% larger
    atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=1))
    return path
