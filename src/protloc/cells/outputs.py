"""The outputs of ``protloc cells`` / ``predict --cells``: resumable, and all or nothing.

Each finished image is saved at once as one part in ``<out>.parts/`` (its table rows, its cells'
embeddings, its image-level row and embedding; one ``.npz`` written atomically, after its label
images), so a run killed at any moment resumes with the finished images kept and the rest redone.
The table and the AnnData files are written under temporary names and renamed only when all of
them are written: a full disk leaves no table that looks finished beside a cut ``.h5ad``. The parts
go when the run is complete. The columns, the ``uns`` and the writers (``write_outputs``) are the
single-process run's and the distributed merge's alike (``protloc.distributed``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from protloc.errors import ProtlocError
from protloc.files import atomic_path, atomic_paths, atomic_save_npz

TABLE_FORMATS = (".csv", ".parquet")


def _disk_error(path: Path, exc: OSError, kept: str) -> ProtlocError:
    return ProtlocError(f"cannot write {path}: {exc.strerror or exc}; {kept}: free space and rerun the same command")


class CellParts:
    """``<out>.parts/``: one part per finished image, the run's options in ``run.json`` (a part of a run
    with another model or other options is never mixed in), locked against a second run."""

    def __init__(self, table: Path, options: dict) -> None:
        self.folder = table.with_name(table.name + ".parts")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ProtlocError(f"cannot create {self.folder}: {exc.strerror or exc}") from None
        self._lock = open(self.folder / "lock", "ab")
        try:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # Windows: one run per output is the user's to keep
            pass
        except OSError:
            self._lock.close()
            raise ProtlocError(f"another protloc run is writing {table}: wait for it to finish, "
                               "or choose another --out") from None
        stated = self.folder / "run.json"
        text = json.dumps(options, sort_keys=True, default=str)
        if stated.exists() and stated.read_text(encoding="utf-8", errors="replace") != text:
            self._lock.close()
            raise ProtlocError(f"{self.folder} holds the finished images of a run with another model or other "
                               "options: rerun with those, remove the folder, or choose another --out")
        if not stated.exists():
            from protloc.files import atomic_write_text

            try:
                atomic_write_text(stated, text)
            except OSError as exc:
                self._lock.close()
                raise _disk_error(stated, exc, "nothing was done yet") from None

    def _path(self, image_id: str) -> Path:
        return self.folder / (hashlib.sha1(image_id.encode("utf-8", "surrogateescape")).hexdigest() + ".npz")

    def load(self, image_id: str) -> dict | None:
        """The finished image's part, or None (also for a part a crash cut: it is redone)."""
        return load_part(self._path(image_id), image_id)

    def save(self, image_id: str, rows, embeddings: np.ndarray, image_row: dict,
             image_embedding: np.ndarray) -> None:
        try:
            save_part(self._path(image_id), image_id, rows, embeddings, image_row, image_embedding)
        except OSError as exc:
            raise _disk_error(self.folder, exc, "the images finished before are kept") from None

    def remove(self) -> None:
        self._lock.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def close(self) -> None:
        self._lock.close()


def load_part(path: Path, image_id: str) -> dict | None:
    """An image's part (``save_part``), or None: absent, another image's, or cut by a crash."""
    if not path.exists():
        return None
    try:
        import pandas as pd

        with np.load(path, allow_pickle=False) as data:
            if str(data["id"]) != image_id:
                return None
            names = [str(n) for n in data["columns"]]
            rows = pd.DataFrame({n: data[f"column{k}"] for k, n in enumerate(names)}, columns=names)
            return {"rows": rows, "embeddings": data["embeddings"],
                    "image_row": json.loads(str(data["image_row"])), "image_embedding": data["image_embedding"]}
    except (OSError, ValueError, KeyError):
        return None


def save_part(path: Path, image_id: str, rows, embeddings: np.ndarray, image_row: dict,
              image_embedding: np.ndarray) -> None:
    """One finished image as one ``.npz``, written atomically. ``rows``: its table rows, a DataFrame
    (kept column by column: a JSON list of 65,535 rows took seconds to write and read back)."""
    columns = {}
    for k, name in enumerate(rows.columns):
        values = np.asarray(rows[name].to_numpy())
        # text as a fixed-width string array: an object array would need pickle, refused on load
        columns[f"column{k}"] = values if values.dtype.kind in "biuf" else values.astype(str)
    atomic_save_npz(path, id=np.array(image_id), columns=np.array(list(rows.columns), dtype=str), **columns,
                    embeddings=np.asarray(embeddings, np.float32), image_row=np.array(json.dumps(image_row)),
                    image_embedding=np.asarray(image_embedding, np.float32))


def publish(writes: list[tuple[Path, object]]) -> list[Path]:
    """Write every output under a temporary name (``write(tmp)`` for each ``(path, write)``), then
    rename them all: on a failure none is renamed and the temporary files are removed."""
    paths = [path for path, _ in writes]
    path = paths[0] if paths else None
    try:
        with atomic_paths(paths) as temporaries:
            for (path, write), tmp in zip(writes, temporaries):
                write(tmp)
    except Exception as exc:  # h5py reports a full disk as a RuntimeError with the errno in its text
        if isinstance(exc, OSError) or "errno = " in str(exc):
            raise ProtlocError(f"cannot write {path}: {_reason(exc)}; the finished images are kept in the "
                               ".parts folder: free space and rerun the same command") from None
        raise
    return paths


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc)
    if "error message = '" in text:  # HDF5: "... errno = 28, error message = 'No space left on device', ..."
        return text.split("error message = '", 1)[1].split("'", 1)[0]
    return text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__


def six_digits(values: np.ndarray) -> np.ndarray:
    """``float("%.6g" % v)`` for every value, vectorised."""
    out = values.astype(np.float64, copy=True)
    finite = np.isfinite(out) & (out != 0)
    exponent = np.floor(np.log10(np.abs(out[finite]))).astype(np.int64)
    shift = 5 - exponent
    scaled = out[finite]
    up, down = shift >= 0, shift < 0
    scaled[up] = np.round(scaled[up] * 10.0 ** shift[up]) / 10.0 ** shift[up]
    scaled[down] = np.round(scaled[down] / 10.0 ** -shift[down]) * 10.0 ** -shift[down]
    out[finite] = scaled
    return out


def write_table(path: Path, rows: list[dict], columns: list[str]) -> Path:
    """The per-cell (or per-image) table as CSV or Parquet, under its final name only when complete."""
    import pandas as pd

    from protloc.files import spreadsheet_safe

    frame = pd.DataFrame(rows, columns=columns)
    if path.suffix.lower() == ".parquet":
        with atomic_path(path) as tmp:
            frame.to_parquet(tmp, index=False)
        return path
    else:
        # ids a spreadsheet would run as formulas are defused, as in every CSV protloc writes
        for name in ("image_id", "predicted", "top_class"):
            if name in frame:
                frame[name] = frame[name].map(lambda v: spreadsheet_safe(v) if isinstance(v, str) else v)
        # 6 significant digits, rounded in numpy: pandas' float_format formats cell by cell in Python
        # (5 s of a 65,535-cell table); the shortest repr of the rounded value is the same text.
        for name in frame.columns[frame.dtypes == np.float64]:
            frame[name] = six_digits(frame[name].to_numpy())
        with atomic_path(path) as tmp:  # never a half-written table under the final name
            frame.to_csv(tmp, index=False)
    return path


def write_anndata(path: Path, rows: list[dict], columns: list[str], embeddings: np.ndarray, uns: dict) -> Path:
    """An AnnData file: obs = the table's rows, X = the embeddings; written atomically."""
    import anndata
    import pandas as pd

    obs = pd.DataFrame(rows, columns=columns)  # rows: a list of dicts or a DataFrame
    ids = obs["image_id"].astype(str)
    obs.index = (ids + ":" + obs["cell_id"].astype(str) if "cell_id" in obs else ids).tolist()
    for name in ("image_id", "predicted", "top_class"):
        if name in obs:
            obs[name] = obs[name].astype(str)
    adata = anndata.AnnData(X=embeddings.astype(np.float32), obs=obs, uns=uns)
    # Built in memory, then written by Python: HDF5 writing straight to a full disk raised a cascade
    # of errors and then crashed the interpreter at exit (SIGSEGV); now a full disk is an OSError.
    import io

    import h5py
    from anndata.io import write_elem

    from protloc.files import atomic_write

    image = io.BytesIO()
    with h5py.File(image, "w") as handle:
        write_elem(handle, "/", adata)
    atomic_write(path, lambda target: target.write(image.getbuffer()))
    return path


def output_paths(out: str | Path) -> dict[str, Path]:
    """Where a run with table ``out`` writes: the table, its AnnData files and its label images."""
    out = Path(out)
    if out.suffix.lower() not in TABLE_FORMATS:
        raise ProtlocError(f"cannot tell the table format of {out.name}: use .csv or .parquet")
    stem = out.with_suffix("")
    return {"table": out, "h5ad": Path(f"{stem}.h5ad"), "masks": Path(f"{stem}-masks"),
            "images": Path(f"{stem}.images.h5ad")}


def remove_stale_pictures(paths: dict, maps_dir) -> None:
    for folder in (paths["masks"], Path(maps_dir) if maps_dir is not None else None):
        for stale in folder.glob(".*.tmp") if folder is not None and folder.is_dir() else ():
            stale.unlink(missing_ok=True)  # a picture a kill -9 interrupted (it was redone)


def cell_columns(classes) -> list[str]:
    """The per-cell table's columns (and the .h5ad's obs), in order."""
    return ["image_id", "cell_id", "centroid_y", "centroid_x", "area", "nucleus_area", "border", "expression",
            "signal_to_noise", *classes, "predicted", "top_class"]


def image_columns(classes) -> list[str]:
    """The per-image .h5ad's obs (``embeddings``)."""
    return ["image_id", "cells", *classes, "predicted"]


def cells_uns(predictor, method: str | None, scoring: str, precision: str) -> dict:
    """The .h5ad's ``uns``."""
    from protloc.cells.scoring import DESCRIPTIONS

    return {"model": predictor.name, "classes": list(predictor.classes), "method": method,
            "probabilities": DESCRIPTIONS[scoring], "scoring": scoring,
            "embedding": "gapnet-pl masked block averages (224)" if method == "masked-features" else "probabilities",
            "channels": predictor.network_channels, "precision": precision}


def write_outputs(result, predictor, paths: dict, scoring: str, precision: str,
                  embeddings: bool) -> None:
    """The errors list, then the table and the .h5ad files from the images' parts gathered in
    ``result`` (a ``protloc.cells.pipeline.CellsResult`` filled by its ``new_result``/``add_part``), all published together. No image analysed: an error."""
    import pandas as pd

    from protloc.inference.batch import write_skipped

    errors_file = paths["table"].with_name(paths["table"].stem + ".errors.csv")
    if result.failures:
        result.errors_file = errors_file
        write_skipped(errors_file, [{"id": i, "reason": r} for i, r in result.failures])
    else:
        errors_file.unlink(missing_ok=True)
    if result.images == 0:
        reasons = "; ".join(f"{i}: {r}" for i, r in result.failures[:3])
        where = f"; every reason in {errors_file}" if result.failures else ""
        raise ProtlocError(f"no image could be analysed ({reasons}){where}")
    columns = cell_columns(predictor.classes)
    frames = [frame for frame in result.rows if len(frame)]
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    image_rows = result.image_rows
    dims = next((e.shape[1] for e in result.cell_embeddings if e.ndim == 2 and e.shape[1]), 0)
    stacked = (np.concatenate([e.reshape(-1, dims) for e in result.cell_embeddings]) if len(rows)
               else np.zeros((0, dims), np.float32))
    uns = cells_uns(predictor, result.method, scoring, precision)
    writes = [(paths["h5ad"], lambda tmp: write_anndata(tmp, rows, columns, stacked, uns))]
    if embeddings:
        writes.append((paths["images"], lambda tmp: write_anndata(tmp, image_rows, image_columns(predictor.classes),
                                                                  np.stack(result.image_embeddings), uns)))
    writes.append((paths["table"], lambda tmp: write_table(tmp, rows, columns)))  # last: the table says "finished"
    result.files.extend(publish(writes))
