"""Shared test set-up.

Helpers live in tests/helpers (imported as `helpers.*`). Session-scoped fixtures build each tiny
model directory and the tiny tokenizer once, and two factories share start-ups: `engine_factory`
returns one `radixlm.Engine` per distinct set of arguments and `server_factory` one
`radixlm.launch_server` subprocess per distinct model and flags, both stopped at the end of the
session. A shared engine or server keeps its radix cache and counters between tests: a test whose
assertion needs a cold cache flushes it first, and a test that kills or reconfigures its runtime
starts a private one. `make test` runs two pytest-xdist workers, whole files each
(`--dist loadfile`); each worker has its own session, so its own shared engines and servers.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

collect_ignore = ["stress"]  # long reliability drivers, run by hand (tests/stress/__init__.py)

# The shared tiny-Llama engines' arguments: float32 so HF references compare exactly on any device,
# a pool large enough for the constrained-decoding batches.
SHARED_ENGINE_ARGS: dict[str, Any] = dict(max_total_tokens=16384, dtype="float32", num_threads=1, log_level="warning")


class EngineFactory:
    """One Engine per (model path, keyword arguments), started on first request; a shared engine
    is checked for leaked KV slots and shut down at the end of the session."""

    def __init__(self) -> None:
        self.engines: dict[str, Any] = {}

    def __call__(self, model_path: str, **kwargs: Any) -> Any:
        import radixlm

        kwargs = {"dtype": "float32", **kwargs}  # as the shared engines: exact on any CPU
        key = repr((model_path, sorted(kwargs.items())))
        if key not in self.engines:
            self.engines[key] = radixlm.Engine(model_path, **kwargs)
        return self.engines[key]

    def close(self) -> None:
        engines, self.engines = list(self.engines.values()), {}
        try:
            for engine in engines:
                engine.check_no_leak()
        finally:
            for engine in engines:
                engine.shutdown()


class ServerFactory:
    """One `launch_server` subprocess per (model path, flags), started on first request."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, ...], tuple[str, Any]] = {}

    def __call__(self, model_path: str, *flags: str) -> tuple[str, Any]:
        from helpers.server_utils import launch_server

        key = (model_path, *flags)
        if key not in self.servers:
            self.servers[key] = launch_server(model_path, *flags)
        return self.servers[key]

    def close(self) -> None:
        from helpers.server_utils import stop

        servers, self.servers = list(self.servers.values()), {}
        for _url, proc in servers:
            stop(proc)


# -- model directories and tokenizer ---------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`tiny_model(arch)`: the directory of the tiny random model of `arch` (seed 0), built once."""
    from helpers.tiny_models import make_tiny_model

    built: dict[str, str] = {}

    def get(arch: str = "llama") -> str:
        if arch not in built:
            built[arch] = make_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}"), arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """`tiny_hf_model(arch)`: the tiny random model of an architecture served through the
    Transformers backend (helpers.tiny_hf_archs), built once."""
    from helpers.tiny_hf_archs import make_tiny_hf_model

    built: dict[str, str] = {}

    def get(arch: str) -> str:
        if arch not in built:
            built[arch] = make_tiny_hf_model(tmp_path_factory.mktemp(f"tiny_hf_{arch}"), arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: str) -> Callable[[str], str]:
    """`tiny_vlm(kind)`: the directory of the tiny random vision model of `kind` (helpers.vlm.KINDS:
    "llava", "llava_next", "qwen2_vl", "qwen2_5_vl"; seed 0) on the tiny tokenizer, built once."""
    from helpers.vlm import make_tiny_vlm

    built: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in built:
            built[kind] = make_tiny_vlm(tmp_path_factory.mktemp(f"tiny_vlm_{kind}"), tiny_tokenizer_dir, kind)
        return built[kind]

    return get


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model: Callable[[str], str]) -> str:
    return tiny_model("llama")


@pytest.fixture(scope="session")
def char_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from helpers.lang_utils import make_char_model

    return make_char_model(tmp_path_factory.mktemp("char_model"))


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from helpers.tiny_models import make_tiny_tokenizer

    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


# -- engines and servers -------------------------------------------------------------------------
@pytest.fixture(scope="session")
def engine_factory() -> Iterator[EngineFactory]:
    factory = EngineFactory()
    yield factory
    factory.close()


@pytest.fixture
def no_leak(engine: Any) -> Iterator[None]:
    """After the test, every KV slot of the module's `engine` is free or held by the radix cache."""
    yield
    engine.check_no_leak()


@pytest.fixture(scope="session")
def shared_engine(engine_factory: EngineFactory, tiny_llama_dir: str) -> Callable[..., Any]:
    """`shared_engine(**overrides)`: the shared tiny-Llama engine with SHARED_ENGINE_ARGS updated
    by `overrides` (e.g. another grammar backend), started once per distinct set."""
    import dataclasses

    from radixlm.config.server_args import ServerArgs

    defaults = {f.name: f.default for f in dataclasses.fields(ServerArgs)}

    def get(**overrides: Any) -> Any:
        # an override equal to the ServerArgs default names the same engine as leaving it out
        kwargs = {**SHARED_ENGINE_ARGS, **{k: v for k, v in overrides.items() if defaults.get(k, v) != v}}
        return engine_factory(tiny_llama_dir, **kwargs)

    return get


@pytest.fixture(scope="session")
def llama_engine(shared_engine: Callable[..., Any]) -> Any:
    """The shared engine on the tiny Llama (SHARED_ENGINE_ARGS)."""
    return shared_engine()


@pytest.fixture(scope="session")
def server_factory() -> Iterator[ServerFactory]:
    factory = ServerFactory()
    yield factory
    factory.close()


@pytest.fixture(scope="session")
def server(server_factory: ServerFactory, tiny_llama_dir: str) -> tuple[str, Any]:
    """The shared server on the tiny Llama with launch_server's defaults: (base URL, process)."""
    return server_factory(tiny_llama_dir)


@pytest.fixture(scope="session")
def url(server: tuple[str, Any]) -> str:
    return server[0]


@pytest.fixture(scope="session")
def http(url: str) -> Iterator[Any]:
    """An httpx client of the shared server whose response statuses are recorded."""
    from helpers.server_client import recording_client

    with recording_client(base_url=url) as client:
        yield client


@pytest.fixture(scope="session")
def oai(url: str) -> Iterator[Any]:
    """The official OpenAI client on the shared server, over a recording transport."""
    import openai
    from helpers.server_client import recording_client

    with recording_client() as transport:
        yield openai.OpenAI(base_url=f"{url}/v1", api_key="x", http_client=transport, max_retries=0)
