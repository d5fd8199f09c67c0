"""Start a loopback server on a tiny random model for a stress run (or use a given URL)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from typing import Iterator, Optional


@functools.lru_cache(maxsize=None)
def shared_tiny_model() -> str:
    """One tiny random Llama per test process (building it costs seconds), removed at exit."""
    from tiny_models import make_tiny_model

    tmp = tempfile.mkdtemp(prefix="radixlm_tiny_")
    atexit.register(shutil.rmtree, tmp, True)
    return make_tiny_model(tmp)


@contextlib.contextmanager
def tiny_model_dir() -> Iterator[str]:
    from tiny_models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        yield make_tiny_model(tmp)


@contextlib.contextmanager
def started_server(url: Optional[str], model_path: Optional[str], *flags: str) -> Iterator[str]:
    """`url` if given, else a fresh server (tiny model unless `model_path`), stopped afterwards."""
    if url:
        yield url
        return
    from server_utils import launch_server, stop

    with contextlib.ExitStack() as stack:
        path = model_path or stack.enter_context(tiny_model_dir())
        base, proc = launch_server(path, *flags)
        try:
            yield base
        finally:
            stop(proc)
