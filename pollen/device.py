"""The one place where Pollen picks a device and its numeric precision."""

from __future__ import annotations

import contextlib
import importlib.util

import torch

from pollen.config import RunConfig
from pollen.errors import ConfigError


def resolve_device(requested: str) -> torch.device:
    """'auto' takes CUDA when present, else CPU; 'cuda' without CUDA is an error."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda was requested but torch sees no CUDA device")
    if requested not in ("cpu", "cuda"):
        raise ConfigError(f"unknown device '{requested}'; choose auto, cpu or cuda")
    return torch.device(requested)


def node_device(config: RunConfig, requested: str | None = None) -> torch.device:
    """The device a node runs ``config`` on: its own ``requested`` device (a node
    config's), else the run's; the keys that need CUDA are checked here, before any
    model is built, because each node resolves "auto" on its own hardware."""
    device = resolve_device(requested or config.device)
    cuda_only = [key for key, on in (("bf16", config.bf16),
                                     ("load-in-4bit", config.load_in_4bit)) if on]
    if cuda_only and device.type != "cuda":
        raise ConfigError(f"{' and '.join(cuda_only)} need(s) CUDA but this node runs on "
                          f"{device.type}: run it on a CUDA device, or set {cuda_only[0]} = "
                          "false for the run (the base model then stays float32)")
    if config.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("load-in-4bit needs bitsandbytes: pip install bitsandbytes")
    return device


def limit_cpu_threads(requested: object) -> None:
    """A node's cap on torch's CPU threads (node config ``threads``), for nodes that share
    a machine: two deployed clients on 2 cores each running torch's default of 2 threads
    oversubscribe it (Flower's simulation gives each client one CPU). None: torch's
    default, every core."""
    if requested is None:
        return
    try:
        threads = int(str(requested))
    except ValueError:
        threads = 0
    if threads < 1:
        raise ConfigError(f"node config threads must be a whole number of at least 1, got "
                          f"{requested!r}")
    torch.set_num_threads(threads)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reset_peak_memory(device: torch.device) -> None:
    """Starts a new peak for ``peak_memory_mb``: torch's allocator statistics on CUDA;
    on Linux also the process's resident-set high-water mark (VmHWM), which writing 5 to
    /proc/self/clear_refs resets (Linux 4.0 and later; proc(5))."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since ``reset_peak_memory``: torch.cuda.max_memory_allocated on CUDA,
    else ``peak_rss_mb``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def peak_rss_mb() -> float:
    """The process's resident-set high-water mark in MiB: VmHWM since the last
    ``reset_peak_memory`` on Linux; elsewhere ru_maxrss, which cannot be reset (a
    process that served several clients then reports the largest so far)."""
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, else KiB
    return peak / (2**20 if sys.platform == "darwin" else 1024)
