"""The small exception hierarchy that the CLI turns into exit status 2.

Every message is one line and names the file or key path, the bad value and what was expected.
"""

from __future__ import annotations


class SocError(Exception):
    """Base of every error caused by user input or by a model that cannot run."""


class ConfigError(SocError):
    """A configuration file or override is malformed or out of range."""


class TraceError(SocError):
    """A workload trace is malformed, unsafe to load, or inconsistent."""


class WiringError(SocError):
    """The SoC cannot be elaborated: a block, port or route is missing or wrong."""


class SimulationStalled(SocError):
    """The event queue emptied while work remained (a deadlock); names who waits for what."""


class ModelError(SocError):
    """A real-model capture cannot run (missing extra, bad text, too many tokens)."""
