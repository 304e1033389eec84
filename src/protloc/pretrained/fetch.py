"""Download the published GapNet-PL weights, verify them, and import them into the user cache.

The two checkpoint files are fetched from the authors' repository (``DEFAULT_BASE_URL``; override with
``base_url`` or the ``PROTLOC_PRETRAINED_URL`` environment variable, e.g. for a mirror or a test
server), each streamed into a temporary folder inside the cache folder with a progress bar. A
connection that breaks is retried, resuming with an HTTP Range request where the server supports it.
Each file's size and sha256 must match the published values (``PUBLISHED_FILES``) before anything is
imported. The imported model file is written atomically, and the temporary folder is removed whether
or not the download succeeds, so a failed fetch leaves nothing in the cache.

Cache location: ``$PROTLOC_CACHE/pretrained/gapnet-pl.pt``, else ``$XDG_CACHE_HOME/protloc/...``, else
``~/.cache/protloc/pretrained/gapnet-pl.pt``. ``resolve_pretrained()`` is what the model name
``pretrained`` means to every other command.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from protloc.errors import ProtlocError
from protloc.pretrained.importer import PUBLISHED_FILES, import_checkpoint

DEFAULT_BASE_URL = "https://github.com/ml-jku/gapnet-pl/raw/master/models/"
URL_ENV = "PROTLOC_PRETRAINED_URL"
CACHE_ENV = "PROTLOC_CACHE"
CHECKPOINT_PREFIX = "gapnet-pl.ckpt"
CACHE_FILE_NAME = "gapnet-pl.pt"
CHUNK = 1 << 16


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "protloc"
    return Path.home() / ".cache" / "protloc"


def default_cache_file() -> Path:
    """Where ``fetch`` (and ``import`` without ``--out``) put the model file ``pretrained`` names."""
    return cache_root() / "pretrained" / CACHE_FILE_NAME


def resolve_pretrained() -> Path:
    """The imported published weights for the model name ``pretrained``; ProtlocError if not there yet."""
    path = default_cache_file()
    if path.is_file():
        return path
    raise ProtlocError(
        f"no pretrained model at {path}: run `protloc pretrained fetch` "
        "(or `protloc pretrained import DIR` with the checkpoint files)"
    )


def base_url(override: str | None = None) -> str:
    url = override or os.environ.get(URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


class _RetryableError(Exception):
    """Internal: a transfer that broke off and may be resumed or retried."""


def _progress_bar(total: int, name: str, enabled: bool):
    from tqdm import tqdm

    # disable=None: shown only when stderr is a terminal
    return tqdm(total=total, initial=0, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                file=sys.stderr, disable=None if enabled else True, leave=False)


def _transfer(url: str, dest: Path, expected_size: int, timeout: float, bar) -> None:
    """One request: append to ``dest`` from where it stops (Range), or start it over."""
    have = dest.stat().st_size if dest.exists() else 0
    if have > expected_size:
        dest.unlink()
        have = 0
    if have == expected_size:
        return
    headers = {"User-Agent": "protloc (pretrained fetch)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # our partial file does not fit the server's: start over
            dest.unlink()
            raise _RetryableError(f"HTTP 416 resuming at byte {have}") from None
        if exc.code >= 500 or exc.code == 429:
            raise _RetryableError(f"HTTP {exc.code} {exc.reason}") from None
        raise ProtlocError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _RetryableError(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise _RetryableError(f"{type(exc).__name__}: {exc}") from None

    with response:
        status = getattr(response, "status", 200)
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            if not match or int(match.group(1)) != have:
                dest.unlink(missing_ok=True)
                raise _RetryableError("server resumed at the wrong byte")
            mode = "ab"
        else:  # the whole file (the server ignored Range, or we asked from the start)
            have = 0
            mode = "wb"
        length = response.headers.get("Content-Length")
        if length is not None and have + int(length) != expected_size:
            raise ProtlocError(f"{url} is {have + int(length)} bytes, the published file {expected_size}: "
                               "not the published checkpoint (check the URL)")
        bar.reset(total=expected_size)
        bar.update(have)
        received = have
        with open(dest, mode) as handle:
            try:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    if received + len(chunk) > expected_size:
                        raise ProtlocError(f"{url} is larger than the published file ({expected_size} bytes)")
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # IncompleteRead, reset, timeout
                raise _RetryableError(f"connection broke after {received} of {expected_size} bytes "
                                      f"({type(exc).__name__})") from None
        if received < expected_size:
            raise _RetryableError(f"connection closed after {received} of {expected_size} bytes")


def download_file(
    url: str,
    dest: str | Path,
    expected_size: int,
    expected_sha256: str,
    *,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest``, resuming or retrying a broken transfer, and verify size and sha256.

    ProtlocError when all attempts fail or the file is not the expected one; ``dest`` is then removed.
    """
    dest = Path(dest)
    last_problem = ""
    with _progress_bar(expected_size, dest.name, progress) as bar:
        try:
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(retry_wait * 2 ** (attempt - 1))
                try:
                    _transfer(url, dest, expected_size, timeout, bar)
                    break
                except _RetryableError as exc:
                    last_problem = str(exc)
            else:
                raise ProtlocError(f"download of {url} failed after {retries + 1} attempts: {last_problem}")
            size = dest.stat().st_size
            if size != expected_size:
                raise ProtlocError(f"downloaded {dest.name} is {size} bytes, expected {expected_size}")
            digest = hashlib.sha256()
            with open(dest, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            if digest.hexdigest() != expected_sha256:
                raise ProtlocError(f"downloaded {dest.name} has sha256 {digest.hexdigest()}, the published file "
                                   f"{expected_sha256}: refusing to import it")
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
    return dest


def fetch_pretrained(
    url: str | None = None,
    *,
    out: str | Path | None = None,
    force: bool = False,
    retries: int = 3,
    retry_wait: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
) -> dict:
    """Download, verify and import the published weights into the cache (or ``out``).

    Returns ``{"out": path, "downloaded": bool, ...import summary}``; a file already there is kept
    unless ``force``.
    """
    target = Path(out) if out is not None else default_cache_file()
    if target.is_file() and not force:
        return {"out": target, "downloaded": False}
    base = base_url(url)
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix=".gapnet-pl-download-", dir=target.parent))
    try:
        for name, (size, sha256) in PUBLISHED_FILES.items():
            download_file(base + name, workdir / name, size, sha256, retries=retries, retry_wait=retry_wait,
                          timeout=timeout, progress=progress)
        summary = import_checkpoint(workdir / CHECKPOINT_PREFIX, target)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary["downloaded"] = True
    summary["url"] = base
    return summary
