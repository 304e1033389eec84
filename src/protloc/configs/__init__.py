"""The paper's training configuration per model, as YAML files for ``protloc train --config NAME``."""
