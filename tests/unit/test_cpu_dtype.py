"""`--dtype auto` on a CPU: bfloat16 only with native bf16 dot products (AMX-BF16 or AVX512-BF16)."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch

from radixlm.model_loader.cpu_dtype import cpu_auto_dtype, cpu_flags, native_bf16_flag
from radixlm.model_loader.loader import resolve_dtype

SAPPHIRE_RAPIDS = "fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8"
COOPER_LAKE = "fpu sse avx2 avx512f avx512_bf16"
ZEN3 = "fpu sse avx2 fma f16c vaes"


@pytest.mark.parametrize(
    "flags, expected",
    [(SAPPHIRE_RAPIDS, torch.bfloat16), (COOPER_LAKE, torch.bfloat16), (ZEN3, torch.float32), ("", torch.float32)],
)
def test_auto_dtype_follows_the_bf16_flags(flags: str, expected: torch.dtype) -> None:
    assert cpu_auto_dtype(flags.split()) == expected


def test_avx512f_alone_is_not_native_bf16() -> None:
    assert native_bf16_flag(["avx512f", "avx512_vnni", "avx2"]) is None
    assert native_bf16_flag(["avx512_bf16", "amx_bf16"]) == "amx_bf16"


def test_cpu_flags_reads_the_first_flags_line(tmp_path: pathlib.Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(str(info)) == frozenset({"fpu", "avx2", "amx_bf16"})
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_the_choice_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="radixlm.model_loader.cpu_dtype"):
        cpu_auto_dtype(ZEN3.split())
        cpu_auto_dtype(SAPPHIRE_RAPIDS.split())
    assert "float32" in caplog.records[0].getMessage()
    assert "bfloat16" in caplog.records[1].getMessage() and "amx_bf16" in caplog.records[1].getMessage()


def test_resolve_dtype_on_cpu_uses_this_machines_flags() -> None:
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", None, cpu) == cpu_auto_dtype()
    assert resolve_dtype("float32", None, cpu) == torch.float32  # explicit names are never overridden
    assert resolve_dtype("bf16", None, cpu) == torch.bfloat16
