"""SGLang's own `bench_serving` (0.5.x) against our server, without `--tokenizer`, with
`--cache-report`, on the native (`--backend sglang`) and OpenAI (`--backend sglang-oai`) routes.

Skipped unless SGLANG_BENCH_PYTHONPATH names where the client is installed, e.g.:

    pip download --no-deps 'sglang>=0.5,<0.6' -d /tmp/sglang-dl
    pip install --no-deps --target /tmp/sglang-pkg /tmp/sglang-dl/sglang-*.whl
    pip install --no-deps --target /tmp/sglang-deps orjson psutil pybase64 msgspec pyzmq ipython \
        traitlets aiohttp multidict yarl propcache aiohappyeyeballs aiosignal frozenlist datasets \
        multiprocess pandas pyarrow dill xxhash sentencepiece compressed_tensors loguru
    SGLANG_BENCH_PYTHONPATH=/tmp/sglang-pkg:/tmp/sglang-deps pytest tests/e2e/test_sglang_bench_client.py

The client imports torchvision at module level and never calls it; when no torchvision matching
this torch is importable, the test puts an import-only stand-in first on the path.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

SGLANG_PATH = os.environ.get("SGLANG_BENCH_PYTHONPATH")
GSP = ["--dataset-name", "generated-shared-prefix", "--gsp-num-groups", "2", "--gsp-prompts-per-group", "4"]
GSP += ["--gsp-system-prompt-len", "128", "--gsp-question-len", "16", "--gsp-output-len", "8", "--num-prompts", "8"]

pytestmark = pytest.mark.skipif(
    not SGLANG_PATH, reason="SGLANG_BENCH_PYTHONPATH is not set: SGLang's bench_serving client is not installed"
)

_STAND_IN = '''"""Import-only stand-in for torchvision (see tests/e2e/test_sglang_bench_client.py)."""
__version__ = "0.0"


class _Any(type):
    def __getattr__(cls, name):
        return cls


def __getattr__(name):
    return _Any(name, (), {})
'''
_STAND_IN_MODULES = ["", "transforms", "transforms/functional", "transforms/v2", "transforms/v2/functional", "io"]


def _client_env(tmp_path: Path) -> dict[str, str]:
    paths = SGLANG_PATH.split(os.pathsep)
    env = {**os.environ, "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(paths)}
    probe = [sys.executable, "-c", "import torchvision.transforms"]
    if subprocess.run(probe, env=env, capture_output=True, timeout=120).returncode != 0:
        for module in _STAND_IN_MODULES:
            package = tmp_path / "stand_in" / "torchvision" / module
            package.mkdir(parents=True, exist_ok=True)
            (package / "__init__.py").write_text(_STAND_IN)
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "stand_in"), *paths])
    probe = [sys.executable, "-c", "import sglang.bench_serving"]
    if subprocess.run(probe, env=env, capture_output=True, timeout=300).returncode != 0:
        pytest.skip(f"sglang.bench_serving does not import from {SGLANG_PATH}")
    return env


@pytest.mark.parametrize("backend", ["sglang", "sglang-oai"])
def test_sglang_bench_serving_reports_cache_hits(url: str, tmp_path: Path, backend: str) -> None:
    env = _client_env(tmp_path)
    assert httpx.post(f"{url}/flush_cache", timeout=60).status_code == 200
    port = str(urlparse(url).port)
    cmd = [sys.executable, "-m", "sglang.bench_serving", "--backend", backend, "--port", port, *GSP]
    cmd += ["--cache-report", "--disable-tqdm", "--max-concurrency", "1"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)  # its result file
    out = proc.stdout
    assert proc.returncode == 0, (out + proc.stderr)[-4000:]
    assert re.search(r"Successful requests:\s+8\b", out), out[-3000:]
    cached = int(re.search(r"Total cached tokens:\s+(\d+)", out).group(1))
    prompt = int(re.search(r"Total prompt tokens:\s+(\d+)", out).group(1))
    # 2 groups x 4 prompts sharing a 128-token system prompt: at least 3 of each 4 hit it.
    assert cached >= 6 * 120 and cached < prompt, out[-3000:]
