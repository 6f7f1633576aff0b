"""Hardware blocks: one module per block kind, each registered by (section, kind)."""

from soc.hw import cim, digital, dram_banked, interconnect, memory, predictor, token_buffer  # noqa: F401  (registration)
from soc.hw.base import (Block, Buffer, Memory, Network, Port, Processor, Scorer, block_class, hold, register,
                         registered)


def kinds(section: str) -> tuple[str, ...]:
    """The block kinds registered for a config section: the one list that config validation reads."""
    return tuple(k for _, k in registered(section))


__all__ = ["Block", "Buffer", "Memory", "Network", "Port", "Processor", "Scorer", "block_class", "hold", "kinds",
           "register", "registered"]
