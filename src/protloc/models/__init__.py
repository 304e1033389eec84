"""The five networks of the paper's comparison, one file each, behind ``create_model(name, ...)``."""

from protloc.models import gapnet_pl  # noqa: F401  (registers the model)
from protloc.models import densenet, m_cnn, deeploc, conv_mil  # noqa: F401  (register the comparison networks)
from protloc.models.base import LocalizationNet, PaperDefaults
from protloc.models.registry import create_model, list_models, model_class

__all__ = ["LocalizationNet", "PaperDefaults", "create_model", "list_models", "model_class"]
