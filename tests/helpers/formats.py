"""Writers of small inputs in every format protloc reads (for the input-layer tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

NAMES = ("DAPI", "anti-Tubulin", "Calreticulin", "GFP")
OMERO = {"channels": [{"label": n, "color": "FFFFFF", "window": {"start": 0, "end": 4000, "min": 0, "max": 65535}}
                      for n in NAMES]}


def field(seed: int, size: int = 64) -> np.ndarray:
    """A [4, size, size] uint16 field with some structure (not blank)."""
    rng = np.random.default_rng(seed)
    return (rng.random((4, size, size)) * 4000).astype(np.uint16)


def write_channel_files(folder: Path, sample_id: str, data: np.ndarray, suffix: str = ".png") -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for colour, plane in zip(("blue", "red", "yellow", "green"), data):
        path = folder / f"{sample_id}_{colour}{suffix}"
        if suffix == ".png":
            Image.fromarray(plane).save(path)
        else:
            tifffile.imwrite(path, plane)
        paths.append(path)
    return paths


def write_ome_tiff(path: Path, data: np.ndarray, size_x="0.08", unit="µm") -> Path:
    """An OME-TIFF naming its channels; ``size_x`` is written into the XML as given (any text of 8
    characters or fewer: it is patched in place, so NaN and other values tifffile refuses get in)."""
    placeholder = "1.234567"
    metadata = {"axes": "CYX", "Channel": {"Name": list(NAMES)}, "PhysicalSizeX": float(placeholder),
                "PhysicalSizeXUnit": unit, "PhysicalSizeY": float(placeholder), "PhysicalSizeYUnit": unit}
    tifffile.imwrite(path, data, ome=True, metadata=metadata, photometric="minisblack")
    raw = path.read_bytes()
    text = str(size_x).ljust(len(placeholder))
    assert len(text) == len(placeholder) and raw.count(placeholder.encode()) == 2
    path.write_bytes(raw.replace(placeholder.encode(), text.encode()))
    return path


def write_ngff(path: Path, data: np.ndarray, pixel_um: float = 0.08, chunks=(1, 32, 32)) -> Path:
    import zarr
    from ome_zarr import writer

    group = zarr.open_group(str(path), mode="w")
    writer.write_image(data, group, axes="cyx", scale={"c": 1.0, "y": pixel_um, "x": pixel_um}, scale_factors=(),
                       axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": chunks},
                       omero=OMERO)
    return path


def chunk_files(store: Path) -> list[Path]:
    """The chunk files of the full-resolution array of an image store (its first dataset)."""
    import json

    path = json.loads((store / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"][0]["path"]
    return sorted(p for p in (store / path).rglob("*") if p.is_file() and p.name not in ("zarr.json", ".zarray",
                                                                                         ".zattrs"))


def write_plate(path: Path, data: np.ndarray) -> Path:
    import zarr
    from ome_zarr import writer

    root = zarr.open_group(str(path), mode="w")
    writer.write_plate_metadata(root, ["B"], ["2"], ["B/2"])
    well = root.require_group("B/2")
    writer.write_well_metadata(well, ["0"])
    writer.write_image(data, well.require_group("0"), axes="cyx", scale={"c": 1.0, "y": 0.08, "x": 0.08},
                       scale_factors=(), axes_units={"y": "micrometer", "x": "micrometer"},
                       omero=OMERO)
    return path
