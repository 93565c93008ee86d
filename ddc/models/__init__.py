"""Models: backbones by name, the DDC network, and freezing."""

from ddc.models.backbones import build_backbone, resolve_weights  # noqa: F401
from ddc.models.freeze import apply_freeze, variable_counts  # noqa: F401
from ddc.models.net import Network, build_network  # noqa: F401
