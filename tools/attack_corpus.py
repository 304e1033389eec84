"""The attack corpus of tools/attack.py: broken and odd inputs a hostile user would try."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

COLOURS = ("blue", "red", "yellow", "green")


# ---------------------------------------------------------------------------------------------- corpus
def _png(path: Path, size=(64, 64), seed=0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(path)


def _sample(folder: Path, sample_id: str, size=(64, 64), seed=0, ext=".png") -> list[Path]:
    paths = []
    for i, colour in enumerate(COLOURS):
        path = folder / f"{sample_id}_{colour}{ext}"
        if ext == ".png":
            _png(path, size, seed * 4 + i)
        else:
            import tifffile

            tifffile.imwrite(path, np.random.default_rng(seed * 4 + i).integers(0, 255, size, dtype=np.uint8))
        paths.append(path)
    return paths


def _tiff_claiming(path: Path, width: int, height: int) -> None:
    """A small uncompressed TIFF whose header claims width x height pixels."""
    import tifffile

    tifffile.imwrite(path, np.zeros((16, 16), np.uint8))
    data = bytearray(path.read_bytes())
    offset = int.from_bytes(data[4:8], "little")
    count = int.from_bytes(data[offset:offset + 2], "little")
    for i in range(count):
        entry = offset + 2 + 12 * i
        tag, kind = int.from_bytes(data[entry:entry + 2], "little"), int.from_bytes(data[entry + 2:entry + 4], "little")
        if tag in (256, 257):
            value = width if tag == 256 else height
            size = 2 if kind == 3 else 4
            data[entry + 8:entry + 8 + size] = value.to_bytes(size, "little")
    path.write_bytes(bytes(data))


def build_corpus(root: Path) -> dict[str, list[Path]]:
    """Folders and files of bad and odd inputs; returns {case name: paths to give `predict`}."""
    import tifffile

    root.mkdir(parents=True, exist_ok=True)
    cases: dict[str, list[Path]] = {}
    good = root / "good"
    good.mkdir(exist_ok=True)
    for i in range(4):
        _sample(good, f"g{i}", seed=i)
    (good / "labels.csv").write_text("id,labels\n" + "".join(f"g{i},Nucleus\n" for i in range(4)))
    cases["good folder"] = [good]

    single = root / "single"
    single.mkdir(exist_ok=True)
    valid = _sample(single, "ok", seed=9)
    png = valid[0].read_bytes()
    (single / "trunc_blue.png").write_bytes(png[: len(png) // 2])
    for c in COLOURS[1:]:
        (single / f"trunc_{c}.png").write_bytes(png)
    tifffile.imwrite(single / "stack3.tif", np.zeros((3, 64, 64), np.uint8))
    tifffile.imwrite(single / "stack7.tif", np.zeros((7, 64, 64), np.uint8))
    tifffile.imwrite(single / "stack4.tif", np.ones((4, 64, 64), np.uint8))
    t = (single / "stack4.tif").read_bytes()
    (single / "trunc.tif").write_bytes(t[: len(t) // 2])
    (single / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(500))
    (single / "zero.tif").write_bytes(b"")
    (single / "zero.npz").write_bytes(b"")
    np.savez(single / "good.npz", image=np.ones((4, 64, 64), np.float32))
    n = (single / "good.npz").read_bytes()
    (single / "trunc.npz").write_bytes(n[: len(n) // 2])
    np.savez(single / "odd.npz", a=np.ones((5,), np.float32))
    _tiff_claiming(single / "bomb.tif", 100_000, 100_000)
    tifffile.imwrite(single / "tiny.tif", np.ones((4, 1, 1), np.uint8))
    tifffile.imwrite(single / "ome3.ome.tif", np.ones((3, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Tubulin", "GFP"]}})
    tifffile.imwrite(single / "omeodd.ome.tif", np.ones((4, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": ["foo", "bar", "baz", "qux"]}})
    tifffile.imwrite(single / "omez.ome.tif", np.ones((3, 4, 64, 64), np.uint16), ome=True,
                     metadata={"axes": "ZCYX", "Channel": {"Name": ["DAPI", "Tubulin", "Calreticulin", "GFP"]}})
    for name in ("stack3.tif", "stack7.tif", "stack4.tif", "trunc.tif", "corrupt.tif", "zero.tif", "zero.npz",
                 "good.npz", "trunc.npz", "odd.npz", "bomb.tif", "tiny.tif", "ome3.ome.tif", "omeodd.ome.tif",
                 "omez.ome.tif"):
        cases[f"file {name}"] = [single / name]
    cases["trunc png channels"] = [single / f"trunc_{c}.png" for c in COLOURS]
    for c in COLOURS:
        _png(single / f"one_{c}.png", (1, 1))
    cases["1x1 channels"] = [single / f"one_{c}.png" for c in COLOURS]
    jpg = single / "j_blue.jpg"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(jpg)
    j = jpg.read_bytes()
    jpg.write_bytes(j[: len(j) // 2])
    for c in COLOURS[1:]:
        _png(single / f"j_{c}.png")
    cases["trunc jpeg channels"] = [single / f"j_{c}.{'jpg' if c == 'blue' else 'png'}" for c in COLOURS]

    zarr_dir = root / "nongff.zarr"
    if not zarr_dir.exists():
        import zarr

        group = zarr.open_group(str(zarr_dir), mode="w")
        group.create_array("data", shape=(4, 64, 64), dtype="uint8")
    cases["zarr without NGFF"] = [zarr_dir]
    malformed = root / "malformed.zarr"
    malformed.mkdir(exist_ok=True)
    (malformed / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                     "attributes": {"ome": {"version": "0.5", "multiscales": 5}}}))
    cases["zarr malformed NGFF"] = [malformed]
    tifffile.imwrite(single / "badxml.ome.tif", np.ones((4, 32, 32), np.uint8), metadata=None,
                     description='<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
                                 '<Pixels ID="P:0" SizeC="abc" SizeX="32" SizeY="32" DimensionOrder="XYCZT" '
                                 'Type="uint8"/></Image></OME>')
    cases["file badxml.ome.tif"] = [single / "badxml.ome.tif"]
    bad_dir = root / "baddir"
    bad_dir.mkdir(exist_ok=True)
    cases["a folder of nothing"] = [bad_dir]
    cases["missing path"] = [root / "does-not-exist.tif"]

    # one folder holding everything at once, beside valid samples that must still be predicted
    mixed = root / "mixed"
    mixed.mkdir(exist_ok=True)
    for i in range(3):
        _sample(mixed, f"m{i}", seed=20 + i)
    for sid in ("a_b", "ctl\x01x", "sp ace", "uni\u00e9"):
        _sample(mixed, sid, seed=30)
    sub = mixed / "a"
    sub.mkdir(exist_ok=True)
    _sample(sub, "b", seed=31)  # id a/b beside a_b
    _sample(mixed, "dup", seed=32)
    import shutil

    shutil.copy(mixed / "dup_blue.png", mixed / "dup_blue.tif")  # two files for one channel
    for c in COLOURS:
        os.symlink(single / f"ok_{c}.png", os.fsencode(mixed) + b"/\xff_" + c.encode() + b".png") \
            if not os.path.lexists(os.fsencode(mixed) + b"/\xff_" + c.encode() + b".png") else None
    if not (mixed / "cycle").is_symlink():
        os.symlink(".", mixed / "cycle")
    for name in ("trunc.tif", "stack3.tif", "stack7.tif", "bomb.tif", "tiny.tif", "zero.tif", "trunc.npz",
                 "ome3.ome.tif", "omeodd.ome.tif"):
        shutil.copy(single / name, mixed / name)
    for c in COLOURS:
        _png(mixed / f"one_{c}.png", (1, 1))
    (mixed / "labels.csv").write_bytes(b"id,labels\nm0,Nucleus\nm1,Nucle\xe9oli\n")
    cases["mixed folder"] = [mixed]
    return cases


