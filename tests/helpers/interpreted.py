"""Re-run a kernel test module's checks in a fresh Python process, through Triton's interpreter
on the CPU (or, with `interpret=False`, with its compiler).

Triton reads `TRITON_INTERPRET` when it is imported, so the checks run in a subprocess with the
variable set (or removed); the test process keeps its own mode for everything else."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNELS = os.path.join(TESTS, "kernels")
UNIT = os.path.join(TESTS, "unit")


def run_interpreted(
    module: str, code: str, paths: Sequence[str] = (), timeout: float = 600, interpret: bool = True
) -> None:
    """Run `code` (Python source; `torch` imported and `t` bound to the test module `module` of
    tests/kernels) in a subprocess with TRITON_INTERPRET=1 (unset when not `interpret`),
    tests/kernels, tests/ and `paths` first on its sys.path. Asserts the process exits 0; the
    failure shows its stderr's tail."""
    path = [KERNELS, TESTS, *paths]
    source = f"import sys\nsys.path[:0] = {path!r}\nimport torch\nimport {module} as t\n{code}\n"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", source], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
