"""Where models run: ``device = "auto" | "cpu" | "cuda" | "cuda:N"`` (and, for corpus encoding, several
comma-separated devices: ``"cuda:0,cuda:1"``), validated with errors that name the option; and the autocast
precision each device gets (bf16 on a CPU with AMX / AVX-512 BF16, bf16 on a GPU that supports it, else fp16
on a GPU, else fp32). A machine without a GPU never touches CUDA: ``auto`` resolves to ``cpu``."""

from __future__ import annotations

import re

from .errors import HardnegError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = ("auto (a GPU when there is one, else the CPU), cpu, cuda or cuda:N")


class DeviceError(HardnegError, ValueError):
    """A device that is malformed or not on this machine; ``field`` names the option."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def parse_devices(spec: str, option: str = "device", several: bool = False) -> list[str]:
    """The devices ``spec`` names (syntax only, nothing is probed)."""
    parts = [p.strip() for p in str(spec).split(",")] if several else [str(spec).strip()]
    bad = [p for p in parts if not DEVICE_RE.match(p)]
    if bad or not parts or (len(parts) > 1 and "auto" in parts):
        allowed = DEVICE_HELP + (", or several comma-separated (cuda:0,cuda:1)" if several else "")
        raise DeviceError(f"{option} = {spec!r}: expected {allowed}", option)
    return parts


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve_device(spec: str, option: str = "device") -> str:
    """``auto`` -> ``cuda`` when a GPU is there, else ``cpu``; ``cuda[:N]`` checked against the machine."""
    (d,) = parse_devices(spec, option)
    if d == "cpu":
        return "cpu"
    has_cuda = cuda_available()
    if d == "auto":
        return "cuda" if has_cuda else "cpu"
    if not has_cuda:
        raise DeviceError(f"{option} = {spec!r}: this machine has no CUDA device (torch.cuda.is_available() is "
                          "False); use 'auto' or 'cpu'", option)
    import torch

    idx = int(d.split(":")[1]) if ":" in d else 0
    if idx >= torch.cuda.device_count():
        raise DeviceError(f"{option} = {spec!r}: there are {torch.cuda.device_count()} CUDA device(s) "
                          f"(cuda:0..cuda:{torch.cuda.device_count() - 1})", option)
    return d


def resolve_devices(spec: str, option: str = "device") -> list[str]:
    """One or several devices (``"cuda:0,cuda:1"``), each resolved."""
    return [resolve_device(d, option) for d in parse_devices(spec, option, several=True)]


def autocast_dtype(device: str, bf16: bool, mode: str | bool | None = "auto"):
    """The autocast dtype of a device: bf16 when ``bf16`` (resolved per device), fp16 on a GPU without bf16
    when the mode is ``auto``; ``None`` = fp32."""
    import torch

    if bf16:
        return torch.bfloat16
    if device.startswith("cuda") and mode in (None, "auto"):
        return torch.float16
    return None


def precision_name(device: str, bf16: bool, mode: str | bool | None = "auto") -> str:
    dt = autocast_dtype(device, bf16, mode) if (bf16 or device.startswith("cuda")) else None
    return {None: "fp32"}.get(dt, str(dt).replace("torch.", "").replace("bfloat16", "bf16").replace("float16",
                                                                                                      "fp16"))
