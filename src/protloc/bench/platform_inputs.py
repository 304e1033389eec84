"""What the platform benchmark uploads: the real HPA field (four JPEGs from ../shared, or synthetic
JPEGs without it), a four-plane TIFF cut from its centre, and the field as the command line reads it
(the reference the servers' answers are compared with).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

FIELD_ID = "57639_1283_B2_10"


def find_field() -> Path | None:
    """The real HPA field in ../shared (or $PROTLOC_SHARED): beside the source tree, or the working folder."""
    candidates = [Path(os.environ["PROTLOC_SHARED"])] if os.environ.get("PROTLOC_SHARED") else []
    candidates += [Path(__file__).resolve().parents[4] / "shared", Path.cwd().parent / "shared", Path.cwd() / "shared"]
    for shared in candidates:
        folder = shared / "real-hpa" / "hpa-download"
        if all((folder / f"{FIELD_ID}_{c}.jpg").is_file() for c in ("blue", "red", "yellow", "green")):
            return folder
    return None


def field_files(tmp: Path, quick: bool) -> tuple[list[tuple[str, bytes]], str]:
    folder = find_field()
    if folder is not None and not quick:
        return ([(p.name, p.read_bytes()) for p in sorted(folder.glob(f"{FIELD_ID}_*.jpg"))],
                f"real HPA field {FIELD_ID}, 2048² four JPEGs ({folder})")
    from PIL import Image

    size = 256 if quick else 2048
    rng = np.random.default_rng(1)
    files = []
    for colour in ("blue", "red", "yellow", "green"):
        path = tmp / f"synthetic_{colour}.jpg"
        Image.fromarray((rng.random((size, size)) * 255).astype(np.uint8)).save(path, quality=90)
        files.append((path.name, path.read_bytes()))
    return files, f"synthetic {size}² four JPEGs" + ("" if quick else " (the real field was not found)")


def tiff_payload(tmp: Path, size: int, field: np.ndarray | None = None) -> tuple[bytes, str]:
    """A four-plane TIFF of ``size``²: the centre of the real field (float32 [4, H, W] of 8-bit
    values, 0.08 µm/px stated in the file's resolution tags), else uniform noise; (bytes, what it is)."""
    import tifffile

    path = tmp / f"sample-{size}.tif"
    if field is not None and min(field.shape[1:]) >= size:
        from protloc.data.pixel_size import HPA_CONFOCAL_PIXEL_SIZE_UM

        top, left = (field.shape[1] - size) // 2, (field.shape[2] - size) // 2
        crop = field[:, top : top + size, left : left + size].astype(np.uint8)
        per_cm = 10000.0 / HPA_CONFOCAL_PIXEL_SIZE_UM
        tifffile.imwrite(path, crop, photometric="minisblack", resolution=(per_cm, per_cm), resolutionunit=3)
        return path.read_bytes(), (f"{size}² centre of the real field {FIELD_ID}, one four-plane 8-bit TIFF "
                                   f"({HPA_CONFOCAL_PIXEL_SIZE_UM} µm/px in its resolution tags)")
    rng = np.random.default_rng(0)
    tifffile.imwrite(path, (rng.random((4, size, size)) * 4000).astype(np.uint16), photometric="minisblack")
    return path.read_bytes(), f"{size}² four-plane uint16 TIFF of uniform noise"


def field_sample(tmp: Path, files: list[tuple[str, bytes]]) -> np.ndarray:
    """The field as the command line reads it: float32 [4, H, W] by the project's channel reader."""
    from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL
    from protloc.data.formats.channel_files import read_channel_file

    folder = tmp / "field"
    folder.mkdir(exist_ok=True)
    by_colour = {}
    for name, data in files:
        (folder / name).write_bytes(data)
        by_colour[Path(name).stem.rsplit("_", 1)[-1]] = folder / name
    return np.stack([np.asarray(read_channel_file(by_colour[COLOUR_OF_CHANNEL[c]], colour=COLOUR_OF_CHANNEL[c]),
                                dtype=np.float32) for c in CHANNELS])
