"""Typed run configuration: dataclasses loaded from JSON, validated before any work starts.

A config is plain data passed down to every part of a run. Loading rejects unknown keys,
wrong types, non-finite numbers and impossible values with a :class:`ConfigError` whose message
names the key path (for example ``train.lr``) and what was expected; the CLI turns it into one
line on stderr and exit status 2.

Overrides use dotted key paths with JSON values: ``--set train.lr=0.01``,
``--set align.mcc.weight=1`` (adds or changes one term), ``--set 'align={"coral": {}}'``
(replaces the mapping).
"""

from ddc.config.parse import apply_overrides, from_dict, load, normalised  # noqa: F401
from ddc.config.schema import (BACKBONES, FREEZE_MODES, Config, ConfigError,  # noqa: F401
                               DataConfig, DomainConfig, FreezeConfig, ModelConfig, TrainConfig)
from ddc.config.validate import validate  # noqa: F401
