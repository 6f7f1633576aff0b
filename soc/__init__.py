"""soc: a discrete-event simulator of a hybrid analog-CIM / digital attention accelerator.

The public API (documented in README): load a config, load a trace, simulate, read the report.
"""

from soc.config import SocConfig, config_from_dict, load_config
from soc.errors import ConfigError, ModelError, SimulationStalled, SocError, TraceError, WiringError
from soc.recorder import MemorySink, Recorder
from soc.simulate import Result, simulate
from soc.trace import Trace, load_trace, save_trace, synth_trace

__version__ = "0.1.0"

__all__ = ["SocConfig", "config_from_dict", "load_config", "Trace", "load_trace", "save_trace", "synth_trace",
           "simulate", "Result", "Recorder", "MemorySink", "SocError", "ConfigError", "TraceError",
           "WiringError", "SimulationStalled", "ModelError", "__version__"]
