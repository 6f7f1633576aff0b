"""Hardware blocks: one module per block kind, each registered by (section, kind)."""

from soc.hw import cim, digital, dram_banked, interconnect, memory, predictor, token_buffer  # noqa: F401  (registration)
from soc.hw.base import Block, Port, block_class, hold, register, registered

__all__ = ["Block", "Port", "block_class", "hold", "register", "registered"]
