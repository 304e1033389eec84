"""The canonical channel order and the HPA colour names of the channels."""

CHANNELS: tuple[str, ...] = ("nucleus", "microtubules", "er", "protein")

# HPA names each channel file by the colour it is shown in.
HPA_COLOURS: dict[str, str] = {"blue": "nucleus", "red": "microtubules", "yellow": "er", "green": "protein"}
COLOUR_OF_CHANNEL: dict[str, str] = {channel: colour for colour, channel in HPA_COLOURS.items()}
