"""Where work runs: one way to turn a device name into a torch.device, with a clear error, and the CPU
thread count as a scoped setting."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Iterator

import torch

from txl_audio.errors import TxlAudioError


class DeviceError(TxlAudioError, ValueError, RuntimeError):
    """A device name that is not one, or a device this machine does not have; the message names the
    option. (A ValueError for the name and a RuntimeError for a missing GPU, as before.)"""


def resolve_device(name: str | torch.device | None = "auto", option: str = "--device") -> torch.device:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``. A name that is
    none of these, or CUDA where there is none, is a DeviceError that names ``option`` (the flag or
    config key)."""
    name = "auto" if name is None else str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise DeviceError(f"{option} must be auto, cpu or cuda[:N], got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"{option} {name} was asked for but torch sees no CUDA GPU; use cpu or auto")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """The card's name, or the CPU and the torch thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """torch's CPU thread count set to ``n`` inside the block (None or 0: left as it is) and restored
    after it, whatever the block changed it to: library calls leave the caller's setting alone."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
