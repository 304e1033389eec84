"""The canonical channel order and the HPA colour names of the channels."""

CHANNELS: tuple[str, ...] = ("nucleus", "microtubules", "er", "protein")

# HPA names each channel file by the colour it is shown in.
HPA_COLOURS: dict[str, str] = {"blue": "nucleus", "red": "microtubules", "yellow": "er", "green": "protein"}
COLOUR_OF_CHANNEL: dict[str, str] = {channel: colour for colour, channel in HPA_COLOURS.items()}

# The channel order of the authors' data: the ``sample`` arrays of their released .npz files, which
# their loader (ml-jku/gapnet-pl, datasets.py) feeds to the network unchanged, and therefore also the
# input order of their published checkpoint. Neither the paper nor the release states it; this is an
# inference (../shared/pretrained/gapnet-pl/PROVENANCE.md): the first convolution's per-input-channel
# L2 norms are 4.42, 9.42, 5.25, 5.37, so input 2 carries twice the weight of the others, as the protein
# channel would; and HPA's colour files read in alphabetical order of colour (blue, green, red, yellow)
# give exactly nucleus, protein, microtubules, ER. One constant, so the npz reader and the checkpoint
# importer cannot disagree.
AUTHORS_CHANNEL_ORDER: tuple[str, ...] = ("nucleus", "protein", "microtubules", "er")
