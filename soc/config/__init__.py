"""SoC configuration: YAML files into frozen, validated dataclasses."""

from soc.config.loader import apply_overrides, config_from_dict, config_to_dict, load_config
from soc.config.schema import (CimConfig, DataflowConfig, DigitalConfig, DramConfig, InterconnectConfig,
                               LayerPruning, LinkConfig, PruningConfig, SocConfig, SramConfig,
                               TokenBufferConfig)

__all__ = ["load_config", "config_from_dict", "config_to_dict", "apply_overrides", "SocConfig", "CimConfig",
           "DataflowConfig", "DigitalConfig", "DramConfig", "InterconnectConfig", "LayerPruning", "LinkConfig",
           "PruningConfig", "SramConfig", "TokenBufferConfig"]
