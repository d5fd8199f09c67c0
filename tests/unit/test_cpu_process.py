"""A CPU scheduler process never loads Triton (whose nanobind extension prints leak warnings at exit)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
from radixlm.executor.cpu_process import keep_triton_out
assert not keep_triton_out("cuda:0")  # a GPU process keeps Triton
assert keep_triton_out("cpu")
assert not keep_triton_out("cpu")  # idempotent: already marked
try:
    import triton
except ImportError:
    pass
else:
    raise AssertionError("triton imported")
import torch
from torch import nn
with torch.device("meta"):
    nn.Embedding(8, 4)  # this is what pulled Triton in through torch._dynamo
from radixlm.models.llama import LlamaForCausalLM  # the CPU model path never needs it
loaded = getattr(sys.modules.get("triton"), "__file__", None)
print("OK", loaded)
"""


def test_cpu_process_keeps_triton_out() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK None"
    assert "leaked" not in out.stderr
