"""train.precision: explicit policies pass through; `auto` follows the machine's bf16 support."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from utils.config import Precision
from utils.engine.precision import AUTO, choose_precision, cpu_flags


@pytest.mark.parametrize("setting", [p for p in typing.get_args(Precision) if p != AUTO])
def test_an_explicit_setting_is_kept_on_any_machine(setting: str) -> None:
    for flags, gpus in (({"amx_bf16"}, []), (set(), []), (set(), [(7, 5)]), (set(), [(9, 0)])):
        assert choose_precision(setting, flags=flags, gpus=gpus)[0] == setting


@pytest.mark.parametrize(
    ("flags", "gpus", "expected"),
    [
        ({"avx512f", "amx_bf16", "amx_tile"}, [], "mixed_bfloat16"),
        ({"avx512f", "avx512_bf16"}, [], "mixed_bfloat16"),
        ({"avx2", "avx512f"}, [], "float32"),  # AVX-512 alone emulates bf16: slower
        (set(), [(8, 0)], "mixed_bfloat16"),
        (set(), [(9, 0), (7, 0)], "float32"),  # the oldest GPU decides
        ({"amx_bf16"}, [(6, 1)], "float32"),  # a GPU does the work, not the CPU
    ],
)
def test_auto_follows_the_hardware(flags, gpus, expected: str) -> None:
    policy, reason = choose_precision(AUTO, flags=flags, gpus=gpus)
    assert policy == expected
    assert reason  # logged with the choice


def test_cpu_flags_reads_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 amx_bf16\nbugs\t\t: none\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "amx_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()
