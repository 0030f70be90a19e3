"""ISP module library, raw handling and the batched pipeline executor (NumPy or CuPy via `xp`)."""

from posisp_dist.isp.executor import ExecStats, ISPExecutor, Pipeline, sequence_lengths
from posisp_dist.isp.registry import DEFAULT_MODULES, DEFAULT_REGISTRY, ModuleSpec, Registry, module_spec

__all__ = [
    "DEFAULT_MODULES",
    "DEFAULT_REGISTRY",
    "ExecStats",
    "ISPExecutor",
    "ModuleSpec",
    "Pipeline",
    "Registry",
    "module_spec",
    "sequence_lengths",
]
