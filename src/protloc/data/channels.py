"""The canonical channel order and every name a channel goes by: the one alias table.

File names (``x_blue.png``, ``x_nucleus.png``), the command line (``--channels DAPI=nucleus``), the
platform's upload fields and OME metadata ("anti-Tubulin (Alexa 594)") all resolve channel names here.
"""

from __future__ import annotations

import re

CHANNELS: tuple[str, ...] = ("nucleus", "microtubules", "er", "protein")

# HPA names each channel file by the colour it is shown in.
HPA_COLOURS: dict[str, str] = {"blue": "nucleus", "red": "microtubules", "yellow": "er", "green": "protein"}
COLOUR_OF_CHANNEL: dict[str, str] = {channel: colour for colour, channel in HPA_COLOURS.items()}

# Spellings of protloc's channels a person types (command line, upload form fields), and HPA's colours.
CANONICAL_ALIASES: dict[str, str] = {
    **{channel: channel for channel in CHANNELS}, **HPA_COLOURS,
    "nuclei": "nucleus", "dna": "nucleus", "tubulin": "microtubules", "endoplasmic-reticulum": "er",
}

# Names a channel goes by in microscopy metadata: stains, dyes, targets. One-word entries match a
# whole word of the name ("anti-Tubulin (Alexa 594)"), several-word entries a phrase in it.
CHANNEL_SYNONYMS: dict[str, tuple[str, ...]] = {
    "nucleus": ("nucleus", "nuclei", "nuclear", "dapi", "hoechst", "dna", "draq5", "sytox"),
    "microtubules": ("microtubules", "microtubule", "tubulin", "tuba", "tubb"),
    "er": ("er", "endoplasmic reticulum", "endoplasmic", "reticulum", "calreticulin", "calnexin", "kdel"),
    "protein": ("protein", "antibody", "gfp", "egfp", "poi", "protein of interest", "target"),
}

# The channel order of the authors' data: the ``sample`` arrays of their released .npz files, which
# their loader (ml-jku/gapnet-pl, datasets.py) feeds to the network unchanged, and therefore also the
# input order of their published checkpoint. Neither the paper nor the release states it; this is an
# inference (../shared/pretrained/gapnet-pl/PROVENANCE.md): the first convolution's per-input-channel
# L2 norms are 4.42, 9.42, 5.25, 5.37, so input 2 carries twice the weight of the others, as the protein
# channel would; and HPA's colour files read in alphabetical order of colour (blue, green, red, yellow)
# give exactly nucleus, protein, microtubules, ER. One constant, so the npz reader and the checkpoint
# importer cannot disagree.
AUTHORS_CHANNEL_ORDER: tuple[str, ...] = ("nucleus", "protein", "microtubules", "er")


def canonical_channel(word: str) -> str | None:
    """A typed channel name or HPA colour as protloc's channel (``Blue`` -> nucleus), else None."""
    return CANONICAL_ALIASES.get(word.strip().lower())


def channel_of_name(name: str) -> set[str]:
    """protloc channels a metadata channel name points to (empty: unknown, several: ambiguous).
    HPA's colours count only when they are the whole name (a channel named "green" in an HPA export)."""
    words = [w for w in re.split(r"[^0-9a-z]+", name.lower()) if w]
    joined = " ".join(words)
    if joined in HPA_COLOURS:
        return {HPA_COLOURS[joined]}
    found = set()
    for channel, synonyms in CHANNEL_SYNONYMS.items():
        for synonym in synonyms:
            if (" " in synonym and f" {synonym} " in f" {joined} ") or synonym in words:
                found.add(channel)
    return found
