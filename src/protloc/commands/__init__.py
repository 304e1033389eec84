"""CLI subcommands; every module here has ``register(subparsers)`` and is picked up by ``protloc.cli``."""
