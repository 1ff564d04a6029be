"""The compute precision of a run: ``train.precision`` as set, or chosen for the machine (``auto``).

bf16 pays where the hardware multiplies in it: on CPUs with AMX or AVX-512 BF16 (measured on this
project's 2-core AMX machine: +30% images/s on the full-width model), and on GPUs from compute
capability 8.0 (Ampere) on. Elsewhere bf16 is emulated and slower than float32, so ``auto`` keeps
float32 there. Variables stay float32 either way (Keras' mixed policies), and the head's last
convs and the loss run in float32 (see nets/yolo.py).
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

import tensorflow as tf

logger = logging.getLogger(__name__)

AUTO = "auto"
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of native bf16 arithmetic
BF16_GPU_CAPABILITY = (8, 0)


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of the first CPU (empty where /proc/cpuinfo does not exist)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def gpu_capabilities() -> list[tuple[int, int]]:
    """Compute capability of each visible GPU."""
    found = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        found.append(tuple(capability) if capability else (0, 0))
    return found


def choose_precision(
    setting: str, *, flags: Collection[str], gpus: list[tuple[int, int]]
) -> tuple[str, str]:
    """The Keras policy for ``setting`` on a machine with ``flags`` and ``gpus``, and why."""
    if setting != AUTO:
        return setting, "set by train.precision"
    if gpus:
        if all(capability >= BF16_GPU_CAPABILITY for capability in gpus):
            return "mixed_bfloat16", f"GPU compute capability {min(gpus)} computes in bf16"
        return "float32", f"GPU compute capability {min(gpus)} has no fast bf16"
    native = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if native:
        return "mixed_bfloat16", f"the CPU computes in bf16 ({', '.join(native)})"
    return "float32", f"the CPU has no native bf16 ({' or '.join(BF16_CPU_FLAGS)})"


def resolve_precision(setting: str) -> str:
    """``setting`` with ``auto`` decided for this machine; logs the choice."""
    policy, reason = choose_precision(setting, flags=cpu_flags(), gpus=gpu_capabilities())
    if setting == AUTO:
        logger.info("train.precision auto: %s (%s)", policy, reason)
    return policy
