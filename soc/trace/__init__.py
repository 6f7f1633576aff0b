"""Workload traces: the per-layer, per-head Q, K, V tensors the simulator replays (format v1), the model
shapes in ``workloads/*.yaml``, and a synthetic generator with realistic attention statistics."""

from soc.trace.format import FORMAT, Trace, TraceMeta, load_trace, save_trace, trace_info
from soc.trace.synth import synth_trace
from soc.trace.workload import WorkloadSpec, list_workloads, load_workload

__all__ = ["FORMAT", "Trace", "TraceMeta", "load_trace", "save_trace", "trace_info", "synth_trace",
           "WorkloadSpec", "load_workload", "list_workloads"]
