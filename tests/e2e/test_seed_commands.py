"""Every `launch_server` / `bench_latency` / `bench_serving` command line of /work/shared/seeds
(SGLang's README, its Transformers-backend doc and blog post) runs here, held verbatim below.

What the test changes, and only that: `python[3] -m sglang.X` runs `radixlm.X`; every Hub id
(`--model-path`, `--tokenizer-path`) is served from a temporary Hugging Face cache holding the tiny
Llama under that id, with HF_HUB_OFFLINE=1 (so the ids themselves stay as written); `--port 30000`
becomes a free port and `sgl-dev-0:50000` a free loopback port (other test runs share this
machine); the harness appends `--max-total-tokens 4096 --num-threads 1` (a CPU-sized KV pool) to
server lines and `--num-threads 1` to bench_latency; bench_serving gets the server's `--port`.
Multi-line seeds are held joined on one line.

Started: one server per distinct runtime configuration, each answering the seed's own request
(`/generate` "Once upon a time," for 16 tokens, or its OpenAI chat example): the Transformers
backend (SEED_TRANSFORMERS), the native default (SEED_DEFAULT, the README's quick start), tp 2,
dp 2 + tp 2, the two-node tp 4 pair over loopback, LLaVA's vicuna_v1.1 line, and the llava-v1.6-34b line
(a tiny LLaVA-NeXT under its two ids, answering an image through the OpenAI client). Lines that differ
from a started one only in the Hub id or in flags that change nothing here (`--host 0.0.0.0`,
`--mem-fraction-static`, which sizes the KV pool on GPUs only and is overridden by
`--max-total-tokens`) are checked to parse to the same ServerArgs with those fields set aside.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
from typing import Any, Iterator

import httpx
import pytest
from helpers.hub_cache import add_to_hub_cache
from helpers.server_utils import free_port, kill_group, server_log, start_command, start_logged, stop
from helpers.tiny_llava import make_image, make_tiny_llava
from helpers.tiny_models import make_tiny_tokenizer

from radixlm.config.cli_args import parse_args
from radixlm.tokenizer.named_templates import VICUNA_SYSTEM

# seeds/000 (Transformers docs) and seeds/001 (blog post).
SEED_TRANSFORMERS = (
    "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.2-1B-Instruct --model-impl transformers "
    "--host 0.0.0.0 --port 30000"
)
SEED_BLOG_DEFAULT = (
    "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.2-1B-Instruct --host 0.0.0.0 --port 30000"
)
SEED_BLOG_HELIUM = (
    "python3 -m sglang.launch_server --model-path kyutai/helium-1-preview-2b --impl transformers "
    "--host 0.0.0.0 --port 30000"
)
# seeds/003 (SGLang's README).
SEED_DOCKER = "python3 -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B --host 0.0.0.0 --port 30000"
SEED_DEFAULT = "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --port 30000"  # x3
SEED_TP2 = "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --port 30000 --tp 2"
SEED_DP2_TP2 = (
    "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --port 30000 --dp 2 --tp 2"
)
SEED_MEM = (
    "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --port 30000 "
    "--mem-fraction-static 0.7"
)
SEED_NODE0 = (
    "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --tp 4 "
    "--nccl-init sgl-dev-0:50000 --nnodes 2 --node-rank 0"
)
SEED_NODE1 = (
    "python -m sglang.launch_server --model-path meta-llama/Meta-Llama-3-8B-Instruct --tp 4 "
    "--nccl-init sgl-dev-0:50000 --nnodes 2 --node-rank 1"
)
SEED_LLAVA_15 = (
    "python -m sglang.launch_server --model-path liuhaotian/llava-v1.5-7b --tokenizer-path llava-hf/llava-1.5-7b-hf "
    "--chat-template vicuna_v1.1 --port 30000"
)
SEED_LLAVA_16 = (
    "python -m sglang.launch_server --model-path liuhaotian/llava-v1.6-vicuna-7b "
    "--tokenizer-path llava-hf/llava-1.5-7b-hf --chat-template vicuna_v1.1 --port 30000"
)
SEED_LLAVA_34B = (
    "python -m sglang.launch_server --model-path liuhaotian/llava-v1.6-34b "
    "--tokenizer-path liuhaotian/llava-v1.6-34b-tokenizer --port 30000"
)
SEED_BENCH_LATENCY = (
    "python -m sglang.bench_latency --model-path meta-llama/Meta-Llama-3-8B-Instruct --batch 32 --input-len 256 "
    "--output-len 32"
)
SEED_BENCH_SERVING = "python3 -m sglang.bench_serving --backend sglang --num-prompt 10"
SEED_REQUEST = {"text": "Once upon a time,", "sampling_params": {"max_new_tokens": 16, "temperature": 0}}
SEED_CHAT = [
    {"role": "system", "content": "You are a helpful AI assistant"},
    {"role": "user", "content": "List 3 countries and their capitals."},
]
SERVER_LINES = [
    SEED_TRANSFORMERS, SEED_BLOG_DEFAULT, SEED_BLOG_HELIUM, SEED_DOCKER, SEED_DEFAULT, SEED_TP2, SEED_DP2_TP2,
    SEED_MEM, SEED_NODE0, SEED_NODE1, SEED_LLAVA_15, SEED_LLAVA_16, SEED_LLAVA_34B,
]  # fmt: skip
HARNESS_FLAGS = ["--max-total-tokens", "4096", "--num-threads", "1"]
# Fields a started line and its look-alikes may differ in (see the module docstring).
SET_ASIDE = ("model_path", "tokenizer_path", "host", "port", "mem_fraction_static")


def _argv(line: str) -> list[str]:
    """The seed's flags (everything after `-m sglang.<tool>`)."""
    words = shlex.split(line)
    assert words[0] in ("python", "python3") and words[1] == "-m" and words[2].startswith("sglang."), line
    return words[3:]


def _command(line: str, substitutions: dict[str, str]) -> list[str]:
    words = shlex.split(line)
    tool = words[2].replace("sglang.", "radixlm.", 1)
    flags = [substitutions.get(w, w) for w in words[3:]]
    return [sys.executable, "-m", tool, *flags]


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: str) -> dict[str, str]:
    """An offline Hugging Face cache with the tiny Llama under every id the seed lines name."""
    cache = tmp_path_factory.mktemp("seed_hub")
    for line in SERVER_LINES + [SEED_BENCH_LATENCY]:
        words = shlex.split(line)
        for flag in ("--model-path", "--tokenizer-path"):
            if flag in words:
                add_to_hub_cache(cache, words[words.index(flag) + 1], tiny_llama_dir)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}


class Started:
    """A seed server on a free port: its base URL and process."""

    def __init__(self, line: str, env: dict[str, str], extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = _command(line, {"30000": str(self.port), **(extra or {})}) + HARNESS_FLAGS
        if "--port" not in cmd:
            cmd += ["--port", str(self.port)]
        self.cmd = cmd
        self.proc = start_command(cmd, self.url, env=env, timeout=300)

    def generate(self) -> dict:
        response = httpx.post(f"{self.url}/generate", json=SEED_REQUEST, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def started(hub_env: dict[str, str]) -> Iterator[list[Started]]:
    servers: list[Started] = []
    yield servers
    for server in servers:
        stop(server.proc)


def _answers(out: dict) -> None:
    assert out["meta_info"]["completion_tokens"] == 16 and len(out["output_ids"]) == 16


def test_every_server_line_parses_as_sglang_means_it(capsys: pytest.CaptureFixture) -> None:
    parsed = {line: parse_args(_argv(line)) for line in SERVER_LINES}
    assert parsed[SEED_TRANSFORMERS].model_impl == parsed[SEED_BLOG_HELIUM].model_impl == "transformers"
    assert (parsed[SEED_TP2].tp_size, parsed[SEED_DP2_TP2].dp_size, parsed[SEED_DP2_TP2].tp_size) == (2, 2, 2)
    assert parsed[SEED_MEM].mem_fraction_static == 0.7
    for node, rank in ((SEED_NODE0, 0), (SEED_NODE1, 1)):
        args = parsed[node]
        assert (args.tp_size, args.nnodes, args.node_rank, args.dist_init_addr) == (4, 2, rank, "sgl-dev-0:50000")
    assert capsys.readouterr().err.count("--nccl-init is deprecated, use --dist-init-addr") == 2
    for line in (SEED_LLAVA_15, SEED_LLAVA_16):
        assert parsed[line].chat_template == "vicuna_v1.1" and parsed[line].tokenizer_path == "llava-hf/llava-1.5-7b-hf"
    assert parsed[SEED_LLAVA_34B].tokenizer_path == "liuhaotian/llava-v1.6-34b-tokenizer"
    assert parsed[SEED_BLOG_DEFAULT].host == "0.0.0.0" and parsed[SEED_DEFAULT].port == 30000


@pytest.mark.parametrize(
    "line, started_as",
    [
        (SEED_BLOG_DEFAULT, SEED_DEFAULT),
        (SEED_DOCKER, SEED_DEFAULT),
        (SEED_MEM, SEED_DEFAULT),
        (SEED_BLOG_HELIUM, SEED_TRANSFORMERS),
        (SEED_LLAVA_16, SEED_LLAVA_15),
    ],
)
def test_lines_not_started_equal_a_started_one(line: str, started_as: str) -> None:
    def config(text: str) -> dict[str, Any]:
        fields = dataclasses.asdict(parse_args(_argv(text)))
        return {k: v for k, v in fields.items() if k not in SET_ASIDE}

    assert config(line) == config(started_as)


@pytest.fixture(scope="module")
def default_server(hub_env: dict[str, str]) -> Iterator[Started]:
    """The README's quick-start line, shared by the tests that only need a running server."""
    server = Started(SEED_DEFAULT, hub_env)
    yield server
    stop(server.proc)


@pytest.mark.parametrize("line", [SEED_DEFAULT, SEED_TRANSFORMERS], ids=["default", "transformers"])
def test_default_and_transformers_lines_answer(
    hub_env: dict[str, str], started: list[Started], default_server: Started, line: str
) -> None:
    if line == SEED_DEFAULT:
        server = default_server
    else:
        server = Started(line, hub_env)
        started.append(server)
    _answers(server.generate())
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
    assert models[0]["id"] == _argv(line)[1]  # the Hub id is the served name, as with SGLang
    if line == SEED_TRANSFORMERS:
        assert "transformers" in server_log(server.proc).lower()


def test_bench_serving_line_against_the_default_server(hub_env: dict[str, str], default_server: Started) -> None:
    server = default_server
    cmd = _command(SEED_BENCH_SERVING, {}) + ["--port", str(server.port)]
    proc = subprocess.run(cmd, env=hub_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Successful requests:" in proc.stdout and " 10" in proc.stdout.split("Successful requests:")[1][:30]


def test_bench_latency_line(hub_env: dict[str, str]) -> None:
    cmd = _command(SEED_BENCH_LATENCY, {}) + ["--num-threads", "1"]
    proc = subprocess.run(cmd, env=hub_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "Benchmark ... batch size 32, input len 256, output len 32" in proc.stdout, proc.stdout[-2000:]
    assert "Prefill. latency" in proc.stdout and "Decode.  median latency" in proc.stdout


def test_llava_vicuna_line_renders_fastchat_and_chats(hub_env: dict[str, str], started: list[Started]) -> None:
    import openai

    server = Started(SEED_LLAVA_15, hub_env)
    started.append(server)
    body = {"messages": SEED_CHAT, "add_generation_prompt": True}
    text = httpx.post(f"{server.url}/apply_chat_template", json=body, timeout=30).json()["text"]
    assert text == "<s>You are a helpful AI assistant USER: List 3 countries and their capitals. ASSISTANT:"
    assert VICUNA_SYSTEM not in text  # the system message replaces vicuna's default
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(model="default", messages=SEED_CHAT, temperature=0, max_tokens=64)
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
@pytest.mark.parametrize("line", [SEED_TP2, SEED_DP2_TP2], ids=["tp2", "dp2-tp2"])
def test_parallel_lines_answer(hub_env: dict[str, str], started: list[Started], line: str) -> None:
    server = Started(line, hub_env)
    started.append(server)
    _answers(server.generate())


@pytest.mark.slow
def test_two_node_lines_on_loopback(hub_env: dict[str, str], started: list[Started]) -> None:
    """Node 1 is started with launch_server as the seed writes it; it runs its two ranks only."""
    loopback = {"sgl-dev-0:50000": f"127.0.0.1:{free_port()}"}
    node1 = start_logged(_command(SEED_NODE1, loopback) + HARNESS_FLAGS, hub_env)
    try:
        server = Started(SEED_NODE0, hub_env, loopback)
        started.append(server)
        _answers(server.generate())
        info = httpx.get(f"{server.url}/server_info", timeout=30).json()
        assert (info["tp_size"], info["nnodes"]) == (4, 2)
    finally:
        for server in started:
            stop(server.proc)
        started.clear()
        try:
            node1.wait(30)
        except subprocess.TimeoutExpired:
            kill_group(node1)
            raise AssertionError("node 1 did not exit after node 0 stopped:\n" + server_log(node1)[-2000:]) from None
    assert node1.returncode == 0, server_log(node1)[-2000:]


@pytest.fixture(scope="module")
def next_hub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An offline cache holding a tiny LLaVA-NeXT under the 34b line's model id and its tokenizer id."""
    root = tmp_path_factory.mktemp("seed_next")
    model = make_tiny_llava(root, make_tiny_tokenizer(root), next_=True)
    words = shlex.split(SEED_LLAVA_34B)
    cache = root / "hub"
    for flag in ("--model-path", "--tokenizer-path"):
        add_to_hub_cache(cache, words[words.index(flag) + 1], model)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "TOKENIZERS_PARALLELISM": "false"}


def test_llava_34b_line_answers_an_image(next_hub_env: dict[str, str], started: list[Started]) -> None:
    import base64

    import openai

    server = Started(SEED_LLAVA_34B, next_hub_env)
    started.append(server)
    url = "data:image/png;base64," + base64.b64encode(make_image(31, size=(60, 30))).decode()
    content = [{"type": "text", "text": "what is this"}, {"type": "image_url", "image_url": {"url": url}}]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="EMPTY")
    reply = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=8
    )
    assert reply.usage.completion_tokens > 0 and reply.choices[0].finish_reason in ("stop", "length")
    text_only = client.chat.completions.create(
        model="default", messages=[{"role": "user", "content": "what is this"}], temperature=0, max_tokens=8
    )
    assert reply.usage.prompt_tokens > text_only.usage.prompt_tokens + 4  # the image's tokens are in the prompt
    info = httpx.get(f"{server.url}/model_info", timeout=30).json()
    assert "LlavaNext" in str(info), info
