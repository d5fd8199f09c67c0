"""Start a loopback server on a tiny random model for a stress run (or use a given URL)."""

from __future__ import annotations

import contextlib
import tempfile
from typing import Iterator, Optional


@contextlib.contextmanager
def tiny_model_dir() -> Iterator[str]:
    from helpers.tiny_models import make_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        yield make_tiny_model(tmp)


@contextlib.contextmanager
def started_server(url: Optional[str], model_path: Optional[str], *flags: str) -> Iterator[str]:
    """`url` if given, else a fresh server (tiny model unless `model_path`), stopped afterwards."""
    if url:
        yield url
        return
    from helpers.server_utils import launch_server, stop

    with contextlib.ExitStack() as stack:
        path = model_path or stack.enter_context(tiny_model_dir())
        base, proc = launch_server(path, *flags)
        try:
            yield base
        finally:
            stop(proc)
