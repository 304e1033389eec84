"""The one parser of channel-file names, shared by the readers, the input listing and the web upload.

A channel file is named ``<prefix>_<channel>.<ext>``: ``<channel>`` is HPA's colour of the channel
(blue, red, yellow, green) or its canonical name (nucleus, microtubules, er, protein), any case;
``<ext>`` one of ``IMAGE_EXTENSIONS``. The prefix (the sample id) may itself contain underscores and
hyphens; only the last ``_`` separates it, as in HPA's and Kaggle's names. Inside a folder that holds
one sample the prefix may be left out (``blue.png``). ``s1-blue.tif`` is not a channel file: a hyphen
is part of a name, never a separator (HPA never uses one), so such a TIFF is read as a multichannel file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath

from protloc.data.channels import CHANNELS, COLOUR_OF_CHANNEL, HPA_COLOURS
from protloc.errors import printable

IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
TIFF_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff")
MULTICHANNEL_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".npz")
# Label images beside an image (``<id>_cellmask.<ext>``, ``<id>_nucleimask.<ext>``: the ``--masks``
# layout of ``protloc.cells.masks``): never inputs themselves.
CELL_MASK_SUFFIX, NUCLEI_MASK_SUFFIX = "_cellmask", "_nucleimask"


def is_label_image_name(name: str) -> bool:
    """Whether a file name is a label image of the ``--masks`` layout (``x_cellmask.ome.tif``, ...)."""
    stem = name.lower().split(".", 1)[0]
    return stem.endswith((CELL_MASK_SUFFIX, NUCLEI_MASK_SUFFIX))

_CHANNEL_OF_TOKEN: dict[str, str] = {**HPA_COLOURS, **{channel: channel for channel in CHANNELS}}
_TOKENS = "|".join(sorted(_CHANNEL_OF_TOKEN, key=len, reverse=True))
_EXTENSIONS = "|".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
_NAME_RE = re.compile(rf"^(?:(?P<prefix>.+)_)?(?P<token>{_TOKENS})\.(?P<ext>{_EXTENSIONS})$", re.I | re.S)


@dataclass(frozen=True)
class ChannelFileName:
    prefix: str | None  # the sample id part; None for a bare ``blue.png``
    channel: str  # canonical channel name (CHANNELS)
    colour: str  # HPA colour the channel is drawn in (selects the RGB planes of colour-encoded files)


def parse_channel_filename(name: str | PurePath) -> ChannelFileName | None:
    """``a_b_Blue.TIF`` -> (prefix 'a_b', nucleus, blue); ``green.png`` -> (None, protein, green); else None.

    Only the last path component counts; a name that is not a channel file gives None.
    """
    match = _NAME_RE.match(PurePath(name).name)
    if not match:
        return None
    channel = _CHANNEL_OF_TOKEN[match.group("token").lower()]
    return ChannelFileName(match.group("prefix"), channel, COLOUR_OF_CHANNEL[channel])


def channel_file_id(name: str | PurePath) -> tuple[str, str] | None:
    """(sample id, channel) of a ``<id>_<channel>.<ext>`` file (a prefix is required), else None."""
    parsed = parse_channel_filename(name)
    if parsed is None or parsed.prefix is None:
        return None
    return parsed.prefix, parsed.channel


def colour_of_file(name: str | PurePath) -> str | None:
    """The HPA colour a channel file is named by (``blue`` for ``x_blue.png`` or ``x_nucleus.png``), or None."""
    parsed = parse_channel_filename(name)
    return parsed.colour if parsed else None


def is_multichannel_candidate(name: str | PurePath) -> bool:
    """A file that can only be a whole sample: an ``.npz``, or a TIFF not named as a channel file."""
    suffix = PurePath(name).suffix.lower()
    return suffix == ".npz" or (suffix in TIFF_EXTENSIONS and parse_channel_filename(name) is None)


def printable_id(name: str) -> str:
    """A file-name-derived id that any UTF-8 output can hold, on one line.

    Linux file names are bytes; Python decodes the ones that are not UTF-8 with lone surrogates
    (``b'\\xff'`` -> ``'\\udcff'``), which no UTF-8 file, terminal or database accepts, and a name may
    hold a newline. Such bytes are written as ``\\xff`` and ``\\n`` (escapes, as Python writes them), so
    the id stays readable, unique and stable; the sample's sources keep the real path.
    """
    return printable(name)
