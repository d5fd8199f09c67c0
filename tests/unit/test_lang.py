"""The frontend language without a model: IR, role markers, speculation helpers, and the
interpreter's threading and error behaviour on a scripted fake backend."""

from __future__ import annotations

import threading
import time
from typing import Iterator, Sequence

import pytest

import radixlm as sgl
from radixlm.lang.backend.base import BaseBackend, Prompt, SelectResult, choice_token_logprobs
from radixlm.lang.chat_template import derive_chat_template
from radixlm.lang.ir import Constant, ExprList, Gen, SamplingSpec, Select
from radixlm.lang.speculative import cut_at_stop, match_reply

pytestmark = pytest.mark.timeout(60)


class FakeBackend(BaseBackend):
    """Generates `<n>` where n is the prompt's length; can sleep, fail, and stream."""

    def __init__(self, delay: float = 0.0, fail_on: str = "") -> None:
        super().__init__()
        self.delay, self.fail_on = delay, fail_on
        self.prompts: list[str] = []
        self.cached: list[str] = []
        self.lock = threading.Lock()

    def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
        with self.lock:
            self.prompts.append(prompt.text)
        time.sleep(self.delay)
        if self.fail_on and self.fail_on in prompt.text:
            raise ConnectionError("backend down")
        return f"<{len(prompt.text)}>", {"temperature": spec.temperature, "max_new_tokens": spec.max_new_tokens}

    def generate_stream(self, prompt: Prompt, spec: SamplingSpec) -> Iterator[tuple[str, dict]]:
        text, meta = self.generate(prompt, spec)
        for ch in text:
            time.sleep(self.delay)
            yield ch, meta

    def select(self, prompt: Prompt, choices: Sequence[str], temperature: float) -> SelectResult:
        return SelectResult(max(choices, key=len), {"prompt": prompt.text})

    def cache_prefix(self, text: str) -> None:
        self.cached.append(text)


def test_expressions_concatenate_into_flat_lists() -> None:
    expr = "Q: " + sgl.gen("a") + "\n" + (sgl.select("b", ["x", "y"]) + "!")
    assert isinstance(expr, ExprList)
    assert [type(e) for e in expr.items] == [Constant, Gen, Constant, Select, Constant]
    assert isinstance(sgl.gen("t", choices=["a", "b"]), Select)
    assert sgl.gen("n", dtype=int).params.regex == r"[-+]?[0-9]+"
    with pytest.raises(TypeError, match="cannot add a int"):
        "x" + sgl.gen("a") + 3
    with pytest.raises(ValueError, match="non-empty"):
        sgl.select("x", [])


def test_sampling_spec_merges_over_run_defaults() -> None:
    spec = sgl.gen("a", max_tokens=5, stop=["\n", "."], json_schema={"type": "object"}).params
    merged = spec.merged_over(SamplingSpec(max_new_tokens=128, temperature=0.5, stop="x"))
    native = merged.to_native()
    assert native["max_new_tokens"] == 5 and native["temperature"] == 0.5 and native["stop"] == ["\n", "."]
    assert native["json_schema"] == '{"type": "object"}'


def _chatml(messages: list[dict]) -> str:
    if messages and messages[0]["role"] == "assistant":
        raise ValueError("conversation must start with a user or system message")
    head = "" if messages and messages[0]["role"] == "system" else "<|im_start|>system\nDefault.<|im_end|>\n"
    return head + "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def test_role_markers_derived_from_a_template() -> None:
    tmpl = derive_chat_template(_chatml)
    assert tmpl.begin("system", at_start=True) == "<|im_start|>system\n"
    assert tmpl.begin("user", at_start=True) == "<|im_start|>system\nDefault.<|im_end|>\n<|im_start|>user\n"
    assert tmpl.begin("user", at_start=False) == "<|im_start|>user\n"
    assert tmpl.begin("assistant", at_start=True) == "<|im_start|>assistant\n"  # refused first: later markers
    assert tmpl.end("assistant") == "<|im_end|>\n"


def test_speculation_helpers() -> None:
    assert cut_at_stop("John\nAge: 3\n", ["\n"]) == ("John", "\nAge: 3\n")
    assert cut_at_stop("John", ["\n"]) is None
    items = [Constant("Name: "), Gen("name", SamplingSpec(stop="\n")), Constant("\nAge: "), Gen("age", SamplingSpec())]
    assert match_reply("Name: Bob\nAge: 7", items, SamplingSpec()) == ["Bob", "7"]
    assert match_reply("Bob\nAge: 7", items, SamplingSpec()) is None


def test_choice_scoring_drops_the_prefix_token_unless_merged() -> None:
    text = {5: " ", 6: " calc", 7: "ulator"}
    entries = [(-1.0, 5), (-2.0, 7)]  # prefix's own trailing " " token, then the choice
    assert choice_token_logprobs(entries, "use a ", lambda e: text[e[1]]) == [-2.0]
    merged = [(-3.0, 6), (-2.0, 7)]  # " calc" swallowed the prefix's trailing space
    assert choice_token_logprobs(merged, "use a ", lambda e: text[e[1]]) == [-3.0, -2.0]


def test_forks_generate_in_parallel_and_join() -> None:
    backend = FakeBackend(delay=0.4)

    @sgl.function
    def program(s):
        s += "Start. "
        forks = s.fork(3)
        forks += [f"Branch {i}: " + sgl.gen("x") for i in range(3)]
        forks.join()

    start = time.monotonic()
    s = program.run(backend=backend)
    assert time.monotonic() - start < 1.0  # three 0.4 s gens, run at once
    assert s["x"] == ["<17>", "<17>", "<17>"]
    assert backend.cached == ["Start. "]  # the parent's text was cached before forking


def test_run_defaults_and_gen_overrides_reach_the_backend() -> None:
    @sgl.function
    def program(s, q):
        s += q + sgl.gen("a") + sgl.gen("b", temperature=0.7, max_tokens=3)

    s = program.run("hi", backend=FakeBackend(), temperature=0, max_new_tokens=9)
    assert s.get_meta_info("a") == {"temperature": 0, "max_new_tokens": 9}
    assert s.get_meta_info("b") == {"temperature": 0.7, "max_new_tokens": 3}
    with pytest.raises(TypeError, match="unexpected argument 'qq'"):
        program.run(qq="x", backend=FakeBackend())


def test_backend_failure_raises_in_run_and_never_hangs() -> None:
    @sgl.function
    def program(s):
        s += "boom " + sgl.gen("a")
        s += "after " + sgl.gen("b")
        s += s["b"]

    with pytest.raises(sgl.ProgramError, match="gen\\('a'\\) failed: ConnectionError: backend down") as info:
        program.run(backend=FakeBackend(fail_on="boom"))
    assert isinstance(info.value.__cause__, ConnectionError)


def test_run_batch_records_errors_and_warms_the_common_prefix() -> None:
    backend = FakeBackend(fail_on="bad")

    @sgl.function
    def program(s, q):
        s += sgl.system("Be brief.")
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen("a"))

    states = program.run_batch([{"q": "good"}, {"q": "bad"}, {"q": "fine"}], backend=backend, progress_bar=True)
    assert [s.error() is None for s in states] == [True, False, True]
    assert isinstance(states[1].error(), sgl.ProgramError)
    assert backend.cached == ["SYSTEM: Be brief.\nUSER: "]
    assert states[0].text().startswith(backend.cached[0] + "good")
    ordered = list(program.run_batch([{"q": str(i)} for i in range(5)], backend=backend, generator_style=True))
    assert [s.messages()[1]["content"] for s in ordered] == ["0", "1", "2", "3", "4"]


def test_unknown_variable_and_role_misuse_raise() -> None:
    @sgl.function
    def unknown(s):
        s += "x" + sgl.gen("a")
        s["b"]

    with pytest.raises(KeyError, match="unknown variable 'b'"):
        unknown.run(backend=FakeBackend())

    @sgl.function
    def unbalanced(s):
        s += sgl.assistant_end()

    with pytest.raises(sgl.ProgramError, match="without a matching assistant_begin"):
        unbalanced.run(backend=FakeBackend())


def test_streaming_text_iter_and_errors_at_the_end() -> None:
    @sgl.function
    def program(s):
        s += "Hello " + sgl.gen("a")

    s = program.run(backend=FakeBackend(delay=0.1), stream=True)
    chunks = list(s.text_iter("a"))
    assert "".join(chunks) == "<6>" and len(chunks) >= 2
    assert s.text() == "Hello <6>"
    s = program.run(backend=FakeBackend(fail_on="Hello"), stream=True)
    with pytest.raises(sgl.ProgramError, match="backend down"):
        list(s.text_iter())


def test_roles_with_context_managers_and_images() -> None:
    class ChatFake(FakeBackend):
        is_chat_model = True
        supports_images = True

    @sgl.function
    def program(s):
        with s.user():
            s += sgl.image(b"\x89PNG fake") + "What is this?"
        s += sgl.assistant(sgl.gen("answer"))

    s = program.run(backend=ChatFake())
    user = s.messages()[0]
    assert user["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert user["content"][1] == {"type": "text", "text": "What is this?"}
    with pytest.raises(sgl.ProgramError, match="text-only model"):
        program.run(backend=FakeBackend())


def test_dtype_values_and_default_backend_holder() -> None:
    class Digits(FakeBackend):
        def generate(self, prompt: Prompt, spec: SamplingSpec) -> tuple[str, dict]:
            return " 42", {}

    @sgl.function
    def program(s):
        s += "n = " + sgl.gen_int("n")

    with pytest.raises(sgl.LangError, match="no backend"):
        program.run()
    sgl.set_default_backend(Digits())
    try:
        assert program.run()["n"] == 42
    finally:
        sgl.set_default_backend(None)
