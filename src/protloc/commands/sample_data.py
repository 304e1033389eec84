"""``protloc sample-data DIR``: write the real HPA field shipped in the package, with its credit.

The field is the one the napari plugin opens (``protloc/napari/data``: one place for the shipped
data): a Human Protein Atlas field in the Kaggle 2018 layout, four 512x512 PNGs. Its licence, CC BY-SA
3.0, asks that the credit travel with the images, so ``PROVENANCE.md`` is written beside them.
Nothing is downloaded: a fresh clone (or a wheel) has everything the quickstart needs.
"""

from __future__ import annotations

from pathlib import Path

CREDIT_FILE = "PROVENANCE.md"
# The napari plugin's data folder, found by path: the plugin's modules import napari helpers that the
# core does not need.
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "napari" / "data"


def shipped_files() -> list[Path]:
    """The shipped field's four channel PNGs and its credit file, in a stable order."""
    files = sorted(SAMPLE_DIR.glob("*.png")) + [SAMPLE_DIR / CREDIT_FILE]
    return files


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "sample-data", help="write a real HPA field (shipped with protloc, CC BY-SA 3.0) into DIR",
        description="Write the real Human Protein Atlas field shipped in the package (antibody 57639, "
                    "a nuclear protein; Kaggle 2018 layout: four 512x512 PNGs, 0.32 um per pixel) into DIR, "
                    "with its credit file PROVENANCE.md (Human Protein Atlas, www.proteinatlas.org, "
                    "CC BY-SA 3.0). DIR is then an input folder: protloc predict DIR --model pretrained.",
    )
    parser.add_argument("dir", metavar="DIR", help="folder to write into (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files of the same name that differ")
    parser.set_defaults(handler=run)


def run(args) -> int:
    from protloc.errors import ProtlocError, printable

    out = Path(args.dir)
    if out.exists() and not out.is_dir():
        raise ProtlocError(f"{printable(str(out))} exists and is not a folder")
    files = shipped_files()
    clashes = [f.name for f in files if (out / f.name).is_file() and (out / f.name).read_bytes() != f.read_bytes()]
    if clashes and not args.force:
        raise ProtlocError(f"{printable(str(out / clashes[0]))} exists with other content (--force overwrites it)")
    out.mkdir(parents=True, exist_ok=True)
    for source in files:
        (out / source.name).write_bytes(source.read_bytes())
    channels = [f.name for f in files if f.suffix == ".png"]
    print(f"wrote {len(channels)} channel files ({', '.join(channels)}) and {CREDIT_FILE} to {out}")
    print("credit: Human Protein Atlas (www.proteinatlas.org), CC BY-SA 3.0 "
          "(https://creativecommons.org/licenses/by-sa/3.0/); keep PROVENANCE.md with the images")
    return 0
