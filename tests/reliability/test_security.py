"""Security: the API key guards every route but /health (constant-time check), the
default bind is loopback, image sources follow the media policy (no SSRF, no file reads unless
allowed), nothing received is unpickled or executed, and request logs never show the key."""

from __future__ import annotations

import http.server
import inspect
import os
import re
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from helpers.server_utils import free_port, stop

from radixlm.entrypoints.http import app as server_app
from radixlm.entrypoints.http.media import MediaPolicy, MediaRejected

KEY = "sk-rel-9f8e7d6c5b4a"
WRONG = "sk-wrong-0a1b2c3d4e"
AUTH = {"Authorization": f"Bearer {KEY}"}
SERVER_DIR = Path(server_app.__file__).parent


class _Hits(http.server.BaseHTTPRequestHandler):
    """A loopback HTTP server that counts requests (to prove nobody connects to it)."""

    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).hits.append(self.path)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/elsewhere")
            self.end_headers()
            return
        body = b"\x89PNG fake image bytes"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def image_host() -> Iterator[str]:
    with socketserver.TCPServer(("127.0.0.1", 0), _Hits) as srv:
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        yield f"http://127.0.0.1:{srv.server_address[1]}"
        srv.shutdown()


@pytest.fixture(scope="module")
def media_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "allowed").mkdir()
        (root / "allowed" / "cat.png").write_bytes(b"\x89PNG cat")
        (root / "secret.txt").write_text("secret")
        (root / "allowed" / "link.png").symlink_to(root / "secret.txt")
        yield root


@pytest.fixture(scope="module")
def server(media_dir: Path, tiny_llama_dir: str) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """Started without --host: the default bind is under test."""
    port = free_port()
    log_path = media_dir / "server.log"
    log = open(log_path, "w")
    cmd = [
        sys.executable,
        "-m",
        "radixlm.launch_server",
        "--model-path",
        tiny_llama_dir,
        "--port",
        str(port),
        "--max-total-tokens",
        "2048",
        "--num-threads",
        "1",
        "--api-key",
        KEY,
        "--log-requests",
        "--allowed-local-media-path",
        str(media_dir / "allowed"),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.25)
    yield url, proc, log_path
    if proc.poll() is None:
        stop(proc)
    log.close()


def assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["code"] == 401 and error["type"] == "authentication_error"
    assert KEY not in response.text and WRONG not in response.text


# -- API key ------------------------------------------------------------------------------------
def test_api_key_guards_every_route_but_health(server: Any) -> None:
    url = server[0]
    schema = httpx.get(f"{url}/openapi.json", headers=AUTH).json()
    routes = [(m.upper(), re.sub(r"\{[^}]+\}", "x", p)) for p, ops in schema["paths"].items() for m in ops]
    routes += [("GET", "/openapi.json"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/no/such/route")]
    assert len(routes) >= 15
    with httpx.Client(base_url=url, timeout=30) as client:
        for method, path in routes:
            if path == "/health":
                continue
            assert_401(client.request(method, path, json={"text": "a"}))
            assert_401(client.request(method, path, json={"text": "a"}, headers={"Authorization": f"Bearer {WRONG}"}))
            assert_401(client.request(method, path, headers={"x-api-key": KEY[:-1]}))  # a prefix is not the key
        assert client.get("/health").status_code == 200  # the one open route
        assert client.get("/v1/models", headers=AUTH).status_code == 200
        assert client.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200
        info = client.get("/get_server_info", headers=AUTH)
        assert info.status_code == 200 and KEY not in info.text


def test_key_check_is_constant_time() -> None:
    source = inspect.getsource(server_app._authorized)
    assert "hmac.compare_digest" in source and "==" not in source


def test_request_logs_never_print_the_key(server: Any) -> None:
    url, _, log_path = server
    with httpx.Client(base_url=url, timeout=60) as client:
        assert (
            client.post(
                "/generate", headers=AUTH, json={"text": "a", "sampling_params": {"max_new_tokens": 2}}
            ).status_code
            == 200
        )
        assert client.get("/v1/models", headers={"Authorization": f"Bearer {WRONG}"}).status_code == 401
        assert client.get("/v1/models", headers={"x-api-key": KEY}).status_code == 200
    time.sleep(0.5)
    log = log_path.read_text()
    assert '"POST /generate HTTP/1.1" 200' in log  # --log-requests does log the requests
    assert KEY not in log and WRONG not in log and "Bearer" not in log


# -- binding ----------------------------------------------------------------------------------------
def test_server_binds_loopback_by_default(server: Any) -> None:
    from radixlm.config.cli_args import parse_args

    assert parse_args([]).host == "127.0.0.1"
    port = int(server[0].rsplit(":", 1)[1])
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port
    ]
    assert listening == ["0100007F:%04X" % port]  # 127.0.0.1 only, not 0.0.0.0
    v6 = Path("/proc/net/tcp6").read_text() if Path("/proc/net/tcp6").exists() else ""
    assert ":%04X" % port not in v6


# -- media policy ------------------------------------------------------------------------------------
def chat_with_image(url: str, source: str) -> httpx.Response:
    content = [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": source}}]
    return httpx.post(
        f"{url}/v1/chat/completions",
        headers=AUTH,
        timeout=30,
        json={"messages": [{"role": "user", "content": content}], "max_tokens": 4},
    )


def assert_400(response: httpx.Response, words: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 400 and words in error["message"], error


def test_image_sources_follow_the_media_policy(server: Any, media_dir: Path, image_host: str) -> None:
    url = server[0]
    _Hits.hits.clear()
    allowed = media_dir / "allowed" / "cat.png"
    for source in (str(allowed), allowed.as_uri(), "data:image/png;base64,iVBORw0KGgo="):
        assert_400(chat_with_image(url, source), "text only")  # allowed source, but a text-only model
    for source in (
        str(media_dir / "secret.txt"),
        (media_dir / "secret.txt").as_uri(),
        str(media_dir / "allowed" / ".." / "secret.txt"),
        str(media_dir / "allowed" / "link.png"),
        "/etc/passwd",
    ):
        assert_400(chat_with_image(url, source), "outside --allowed-local-media-path")
    assert_400(chat_with_image(url, f"{image_host}/cat.png"), "remote image URLs are disabled")
    assert_400(chat_with_image(url, "ftp://127.0.0.1/cat.png"), "not supported")
    assert_400(chat_with_image(url, "file://example.com/etc/passwd"), "no host")
    native = httpx.post(
        f"{url}/generate", headers=AUTH, timeout=30, json={"text": "a", "image_data": [f"{image_host}/x.png"]}
    )
    assert_400(native, "remote image URLs are disabled")
    assert _Hits.hits == []  # no request made the server connect out


def test_media_policy_unit(media_dir: Path, image_host: str) -> None:
    closed = MediaPolicy()
    for source in (str(media_dir / "allowed" / "cat.png"), f"{image_host}/cat.png", "gopher://x", ""):
        with pytest.raises(MediaRejected):
            closed.check(source)
    assert closed.check("data:image/png;base64,AAAA").kind == "data"
    assert closed.load(closed.check("data:image/png;base64,iVBORw0KGgo=")) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(MediaRejected, match="base64"):
        closed.load(closed.check("data:image/png;base64,***"))
    local = MediaPolicy(allowed_local_path=str(media_dir / "allowed"))
    assert local.load(local.check((media_dir / "allowed" / "cat.png").as_uri())) == b"\x89PNG cat"
    with pytest.raises(MediaRejected, match="larger"):
        local.load(local.check(str(media_dir / "allowed" / "cat.png")), max_bytes=3)
    remote = MediaPolicy(allow_remote=True)
    _Hits.hits.clear()
    assert remote.load(remote.check(f"{image_host}/cat.png")) == b"\x89PNG fake image bytes"
    with pytest.raises(MediaRejected, match="302"):  # redirects are not followed
        remote.load(remote.check(f"{image_host}/redirect"))
    assert _Hits.hits == ["/cat.png", "/redirect"]


# -- nothing received is executed ------------------------------------------------------------------------
def test_server_never_unpickles_or_executes_request_data() -> None:
    banned = re.compile(
        r"(?<![\w.])(pickle|marshal|dill|cloudpickle|eval|exec|compile|__import__)\s*[.(]|yaml\.load|"
        r"trust_remote_code\s*=\s*True"
    )
    imports = re.compile(r"\s*(import|from)\s+(pickle|marshal|dill|cloudpickle|shelve)\b")
    for path in sorted(SERVER_DIR.glob("*.py")):
        hits = [line for line in path.read_text().splitlines() if banned.search(line) or imports.match(line)]
        assert not hits, f"{path.name}: {hits}"
