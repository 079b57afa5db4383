"""The runtime: where a model runs and how, decided once. Extraction, fine-tuning, predict and Grad-CAM all
run their networks through one :class:`Runtime` (device, precision, memory format, autocast), so a saved
model applied to an image runs exactly the kernels extraction ran on it.

- **device** (:func:`select_device`): ``auto`` = CUDA, else Apple MPS, else the CPU; a named device that
  cannot be used here is a one-line :class:`~featpipe.core.errors.FeatpipeError` before any work;
- **precision** (:func:`select_precision`): ``bf16`` (autocast, float32 weights) or ``fp32``; ``auto`` =
  fp32 where the device lacks bf16, else the backbone family's faster precision on that device type;
- **memory format**: channels_last when computing in bf16 for families that ask for it (CNNs).

This module knows no backbone: the family's traits (``spec.traits`` of a backbone spec: an object with
``precision(device_type) -> str`` and ``channels_last: bool``, see :class:`Traits`) are passed in by the
caller. torch is imported only when a runtime is used.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Protocol

from featpipe.core.errors import FeatpipeError

PRECISIONS = ("bf16", "fp32")


class Traits(Protocol):
    """What the runtime needs from a backbone family (``spec.traits``)."""

    channels_last: bool  # run channels_last when computing in bf16

    def precision(self, device_type: str) -> str:  # the faster precision on this device type
        ...


def cpu_has_bf16() -> bool:
    """AMX or AVX-512 bf16 in /proc/cpuinfo (Linux); False when unknown."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def select_device(device: str = "auto"):
    """The ``torch.device`` for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``), checked usable."""
    import torch

    if device != "auto":
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise FeatpipeError(f"unknown device '{device}' (auto, cpu, cuda, cuda:N or mps)") from None
        _check_available(dev, device)
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_available(dev, asked: str) -> None:
    """A device that cannot be used here is a one-line error, before any work."""
    import torch

    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise FeatpipeError(f"--device {asked}: no CUDA GPU is usable on this machine (torch "
                                f"{torch.__version__}, cuda available: False); use --device cpu or auto")
        if dev.index is not None and dev.index >= n:
            raise FeatpipeError(f"--device {asked}: this machine has {n} CUDA GPU(s) (cuda:0..cuda:{n - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise FeatpipeError(f"--device {asked}: Apple MPS is not available here; use --device cpu or auto")
    elif dev.type != "cpu":
        raise FeatpipeError(f"--device {asked}: featpipe runs on cpu, cuda or mps")


def select_precision(precision: str, device, traits: Optional[Traits] = None) -> str:
    """``bf16`` (autocast) or ``fp32``. An explicit precision is kept. ``auto`` = fp32 where the device lacks
    bf16 (CUDA without it, CPUs without AMX/AVX-512 bf16, MPS), else the family's faster precision on that
    device type as measured (``traits.precision``; benchmarks/results/precision.md); bf16 with no traits."""
    import torch

    if precision in PRECISIONS:
        return precision
    if precision != "auto":
        raise FeatpipeError(f"unknown precision '{precision}' (auto, bf16 or fp32)")
    if device.type == "cuda":
        has = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        has = cpu_has_bf16()
    else:
        return "fp32"
    if not has:
        return "fp32"
    return traits.precision(device.type) if traits is not None else "bf16"


@dataclass(frozen=True)
class Runtime:
    """Where and how a network runs: ``device`` (a ``torch.device``), ``precision`` (``bf16`` = bf16 autocast
    over float32 weights, or ``fp32``) and ``channels_last`` (the memory format of the module and its inputs).

    :meth:`resolve` decides all three from a request; :meth:`of` rebuilds the runtime of an already decided
    device and precision (a Ray actor, a saved model's recorded precision)."""

    device: Any  # torch.device
    precision: str = "fp32"
    channels_last: bool = False

    @classmethod
    def resolve(cls, device: str = "auto", precision: str = "auto", *, traits: Optional[Traits] = None) -> Runtime:
        """The runtime for a request (``device``: see :func:`select_device`; ``precision``: see
        :func:`select_precision`) and the backbone family's ``traits`` (None: no family)."""
        dev = select_device(str(device))
        return cls.of(dev, select_precision(precision, dev, traits), traits=traits)

    @classmethod
    def of(cls, device, precision: str, *, traits: Optional[Traits] = None) -> Runtime:
        """The runtime of a decided ``device`` and ``precision`` (``bf16`` or ``fp32``): channels_last when
        computing in bf16 for a family that asks for it."""
        import torch

        if precision not in PRECISIONS:
            raise FeatpipeError(f"precision must be bf16 or fp32 here, got '{precision}'")
        cl = bool(traits is not None and traits.channels_last and precision == "bf16")
        return cls(torch.device(device), precision, channels_last=cl)

    @property
    def bf16(self) -> bool:
        return self.precision == "bf16"

    def autocast(self):
        """The context a forward pass runs in: bf16 autocast on the device's type, or nothing (fp32)."""
        if not self.bf16:
            return nullcontext()
        import torch

        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, module, *, eval: bool = True):
        """``module`` on the device, in the memory format, in eval mode (``eval=False``: mode untouched)."""
        import torch

        module = module.to(self.device)
        if self.channels_last:
            module = module.to(memory_format=torch.channels_last)
        return module.eval() if eval else module

    def inputs(self, x):
        """A batch ``(n, C, H, W)`` on the device, in the memory format."""
        import torch

        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, module, x):
        """One no-grad batch through ``module`` (already :meth:`prepare` d): float32 outputs on the CPU."""
        import torch

        with torch.inference_mode(), self.autocast():
            return module(self.inputs(x)).float().cpu()
