"""GPU device holdings: the holder table and its /proc scan (holders.py), NVML (nvml.py)."""

from monitor.state.gpu.holders import GpuHolders, HolderTable, Holding, ScanResult
from monitor.state.gpu.nvml import Nvml, nvml_status

__all__ = ["GpuHolders", "HolderTable", "Holding", "Nvml", "ScanResult", "nvml_status"]
