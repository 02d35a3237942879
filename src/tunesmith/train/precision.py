"""Compute precision: bf16 autocast where the hardware runs it fast, fp32 elsewhere."""

from __future__ import annotations

import re
from pathlib import Path


class PrecisionError(Exception):
    """bf16 asked for on hardware without it."""


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16: without them a CPU emulates bf16 matmuls, slower than fp32."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags: set[str] = set()
    for line in re.findall(r"^flags\s*:(.*)$", cpuinfo, re.M):
        flags.update(line.split())
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def bf16_supported(device_type: str) -> bool:
    if device_type == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return device_type == "cpu" and cpu_has_bf16()


def resolve_precision(
    requested: str, device_type: str, supported: bool | None = None, where: str = ""
) -> str:
    """`auto` -> bf16 where supported, else fp32; `bf16` where unsupported is an error."""
    ok = bf16_supported(device_type) if supported is None else supported
    if requested == "fp32":
        return "fp32"
    if requested == "bf16" and not ok:
        raise PrecisionError(
            f"train.precision: bf16 is not supported on {where or device_type} (CPUs need the avx512_bf16 or "
            "amx_bf16 flag, GPUs compute capability 8.0 or newer); use precision: auto or fp32"
        )
    return "bf16" if ok else "fp32"
