"""Per-process GPU memory and utilisation through NVML (nvidia-ml-py, optional, imported lazily)."""

from __future__ import annotations

from typing import Any


class Nvml:
    """Per-process GPU memory and utilisation through NVML, when nvidia-ml-py loads."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = mode
        self.present = False
        self.error: str | None = None
        self._nv: Any = None
        self._last_ts: dict[int, int] = {}

    def start(self) -> None:
        if self.mode == "off":
            self.error = "off in the config ([gpu] nvml)"
            return
        try:
            import pynvml  # nvidia-ml-py, the optional "gpu" extra
        except ImportError:
            self.error = "nvidia-ml-py is not installed (pip install 'rlguard[gpu]')"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError: no driver, no GPU
            self.error = f"NVML did not initialise: {exc}"
            return
        self._nv = pynvml
        self.present = True

    def close(self) -> None:
        if self._nv is not None:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self._nv = None
            self.present = False

    def sample(self) -> tuple[list[dict[str, Any]], dict[tuple[int, int], dict[str, Any]]]:
        """(per-GPU figures, {(minor, pid): {memory_bytes, sm_util, mem_util}})."""
        nv = self._nv
        if nv is None:
            return [], {}
        gpus: list[dict[str, Any]] = []
        procs: dict[tuple[int, int], dict[str, Any]] = {}
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception as exc:
            self.error = f"nvmlDeviceGetCount: {exc}"
            return [], {}
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                minor = int(nv.nvmlDeviceGetMinorNumber(h))
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                util = nv.nvmlDeviceGetUtilizationRates(h)
                name = nv.nvmlDeviceGetName(h)
            except Exception as exc:
                self.error = f"GPU {i}: {exc}"
                continue
            gpus.append(
                {
                    "index": i,
                    "minor": minor,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_used_bytes": int(mem.used),
                    "memory_total_bytes": int(mem.total),
                    "util_percent": int(util.gpu),
                }
            )
            running: list[Any] = []
            for fn in (
                "nvmlDeviceGetComputeRunningProcesses",
                "nvmlDeviceGetGraphicsRunningProcesses",
            ):
                try:
                    running += list(getattr(nv, fn)(h))
                except Exception:
                    pass
            for p in running:
                used = getattr(p, "usedGpuMemory", None)
                entry = procs.setdefault((minor, int(p.pid)), {"memory_bytes": 0})
                if isinstance(used, int):
                    entry["memory_bytes"] += used
            try:
                samples = nv.nvmlDeviceGetProcessUtilization(h, self._last_ts.get(i, 0))
            except Exception:
                samples = []
            for s in samples:
                entry = procs.setdefault((minor, int(s.pid)), {"memory_bytes": None})
                entry["sm_util"] = int(s.smUtil)
                entry["mem_util"] = int(s.memUtil)
                self._last_ts[i] = max(self._last_ts.get(i, 0), int(s.timeStamp))
        return gpus, procs


def nvml_status(mode: str = "auto") -> tuple[bool, str]:
    """(present, detail) for `rlguard check`: is NVML usable here?"""
    n = Nvml(mode)
    n.start()
    if not n.present:
        return False, n.error or "absent"
    try:
        count = n._nv.nvmlDeviceGetCount()
        version = n._nv.nvmlSystemGetDriverVersion()
        if isinstance(version, bytes):
            version = version.decode()
        return True, f"NVML present: driver {version}, {count} GPU(s)"
    except Exception as exc:
        return True, f"NVML present ({exc})"
    finally:
        n.close()
