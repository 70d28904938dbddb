"""Where work runs: one way to turn a device name into a torch.device, with a clear error."""

from __future__ import annotations

import platform

import torch


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. Asking for
    CUDA where there is none is a RuntimeError that names ``option`` (the flag or config key)."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"{option} must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"{option} {name} was asked for but torch sees no CUDA GPU; use cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU and the torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
