"""soc: a discrete-event simulator of a hybrid analog-CIM / digital attention accelerator.

The public API (documented in README): load a config, load a trace, simulate, read the report. Names are
imported on first use, so that `soc --help` starts fast and a Ctrl-C during the CLI's start-up lands in its
own handler (exit 130) rather than inside this package's imports.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "SocConfig": "soc.config", "config_from_dict": "soc.config", "load_config": "soc.config",
    "ConfigError": "soc.errors", "ModelError": "soc.errors", "SimulationStalled": "soc.errors",
    "SocError": "soc.errors", "TraceError": "soc.errors", "WiringError": "soc.errors",
    "MemorySink": "soc.recorder", "Recorder": "soc.recorder",
    "Result": "soc.simulate", "simulate": "soc.simulate",
    "Trace": "soc.trace", "load_trace": "soc.trace", "save_trace": "soc.trace", "synth_trace": "soc.trace",
}

__all__ = ["SocConfig", "config_from_dict", "load_config", "Trace", "load_trace", "save_trace", "synth_trace",
           "simulate", "Result", "Recorder", "MemorySink", "SocError", "ConfigError", "TraceError",
           "WiringError", "SimulationStalled", "ModelError", "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'soc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``soc.simulate`` is the function, as the eager ``from soc.simulate import simulate`` made it: importing
    the submodule (which the import system records on the package) must not replace it by the module."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "simulate" and isinstance(value, types.ModuleType) and hasattr(value, "simulate"):
            value = value.simulate
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
