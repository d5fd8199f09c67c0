"""`radixlm.Engine`: the in-process API, in SGLang's shape.

The engine tokenizes in the caller's process and runs the scheduler (model, KV cache,
batching) in a child process, so a caller is never blocked by other requests' compute.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any, AsyncIterator, Iterator, Optional, Union

from radixlm.config.server_args import ServerArgs
from radixlm.constrained.router import GrammarRouter
from radixlm.entrypoints.engine_args import embedding_pooling
from radixlm.entrypoints.engine_args import server_args_of as _server_args
from radixlm.entrypoints.request_builder import Params, Prompt, RequestBuilder
from radixlm.entrypoints.request_output import OutputAccumulator
from radixlm.entrypoints.request_output import loop_putter as _loop_putter
from radixlm.entrypoints.request_plan import RequestPlan
from radixlm.ipc.dp_client import DataParallelClient
from radixlm.ipc.messages import ReqOutput, TokenizedGenerateReq
from radixlm.ipc.runtime_client import RuntimeClient
from radixlm.ipc.startup import refuse_engine_during_bootstrap
from radixlm.ipc.validation import RuntimeLimits
from radixlm.multimodal.processor import ImagePreprocessor
from radixlm.tokenizer.chat_templates import resolve_chat_template
from radixlm.tokenizer.loader import apply_chat_template, eos_token_ids, load_tokenizer


class Engine:
    """Engine(model_path=None, **server_args) or Engine(server_args=ServerArgs(...)).
    No path = the bundled SmolLM2-135M-Instruct.

    `generate` returns one dict for one prompt (n=1), a list for a list of prompts or n>1.
    Invariants: after `shutdown()` (or leaving the `with` block) no child process remains;
    `__init__` returns only once the scheduler reported ready, and raises RuntimeError soon
    after the scheduler process dies during start-up (also when the calling script lacks
    `if __name__ == "__main__":`, see `radixlm.ipc.startup`).
    """

    def __init__(
        self, model_path: Optional[str] = None, *, server_args: Optional[ServerArgs] = None, **kwargs: Any
    ) -> None:
        refuse_engine_during_bootstrap()  # first: a child bootstrapping loads nothing
        from radixlm.model_loader.hub import resolve_server_args
        from radixlm.model_loader.loader import load_model_config

        self.server_args = resolve_server_args(_server_args(model_path, server_args, kwargs))
        args = self.server_args
        self.model_config = load_model_config(args.model_path, args.trust_remote_code)
        self.pooling = embedding_pooling(args, self.model_config)  # None unless is_embedding
        self.tokenizer = None
        if not args.skip_tokenizer_init:
            self.tokenizer = load_tokenizer(args.tokenizer_path or args.model_path, args.trust_remote_code)
            if args.chat_template:
                self.tokenizer.chat_template = resolve_chat_template(args.chat_template)
        self.eos_ids = self._eos_ids()
        self.images = ImagePreprocessor.for_model(args.model_path, self.model_config, args.max_images_per_request)
        client_cls = DataParallelClient if args.dp_size > 1 else RuntimeClient
        self.client = client_cls(args, self.tokenizer, self.eos_ids, self.model_config)
        self.info = self.client.info
        self.vocab_size = self.info["vocab_size"]
        self.limits = RuntimeLimits.from_info(self.info)
        self.grammars = GrammarRouter(args.grammar_backend, self.tokenizer, self.vocab_size, self.eos_ids)
        adapters = self.info.get("lora_adapters")
        self.request_builder = RequestBuilder(
            tokenizer=self.tokenizer,
            images=self.images,
            limits=self.limits,
            grammars=self.grammars,
            in_flight=self.client,
            pooling=self.pooling,
            model_config=self.model_config,
            lora_adapters=None if adapters is None else frozenset(adapters),
        )

    def _eos_ids(self) -> set[int]:
        cfg_eos = getattr(self.model_config, "eos_token_id", None)
        if self.tokenizer is None:
            return set([cfg_eos] if isinstance(cfg_eos, int) else (cfg_eos or []))
        return eos_token_ids(self.tokenizer, cfg_eos)

    # -- request preparation (`RequestBuilder`) ------------------------------------------
    def make_requests(
        self,
        prompt: Prompt,
        sampling_params: Params,
        input_ids: Any,
        return_logprob: Any,
        logprob_start_len: Any,
        top_logprobs_num: Any,
        stream: bool,
        rid: Any = None,
        image_data: Any = None,
        lora_path: Any = None,
    ) -> tuple[list[TokenizedGenerateReq], bool]:
        """Tokenize and validate (ValueError naming the problem); returns the requests to send
        (n per prompt, rids "<rid>-<j>" when n>1) and whether the caller gave a batch.
        `image_data` (vision models): one prompt's image or list of images, or for a batch one
        entry (None, an image or a list) per prompt; each image fills one placeholder token.
        `lora_path`: the name of a served LoRA adapter, or for a batch a list of one name (or
        None: the base model) per prompt."""
        plan = self.plan_requests(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            stream,
            rid=rid,
            image_data=image_data,
            lora_path=lora_path,
        )
        return plan.all(), plan.batched

    def plan_requests(
        self,
        prompt: Prompt,
        sampling_params: Params,
        input_ids: Any,
        return_logprob: Any,
        logprob_start_len: Any,
        top_logprobs_num: Any,
        stream: bool,
        rid: Any = None,
        image_data: Any = None,
        lora_path: Any = None,
    ) -> RequestPlan:
        """`make_requests` without waiting for images: every check that needs no image is done
        here (ValueError), the prompts' images are prepared on the preprocessor's pool, and a
        prompt's image errors and its checks against its expanded length come from iterating
        the plan (in prompt order)."""
        return self.request_builder.plan(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            stream,
            rid=rid,
            image_data=image_data,
            lora_path=lora_path,
        )

    def make_embedding_requests(
        self, prompt: Prompt, input_ids: Any, dimensions: Optional[int] = None, rid: Any = None
    ) -> tuple[list[TokenizedGenerateReq], bool]:
        """Like `make_requests`, for embeddings (prefill-only requests the scheduler pools); a
        ValueError names the problem, also when this engine does not serve an embedding model."""
        return self.request_builder.embedding_requests(prompt, input_ids, dimensions, rid)

    def check_lora_path(self, lora_path: Any) -> None:
        """Every adapter name in `lora_path` (a name, a list of names / None, or None) must be
        served: ValueError naming the first one that is not."""
        self.request_builder.check_lora_path(lora_path)

    @property
    def lora_adapters(self) -> Optional[frozenset[str]]:
        """Names of the LoRA adapters served (None: LoRA off); replaced whole on load / unload."""
        return self.request_builder.lora_adapters

    @lora_adapters.setter
    def lora_adapters(self, names: Optional[frozenset[str]]) -> None:
        self.request_builder.lora_adapters = names

    # -- generation ------------------------------------------------------------------
    def generate(
        self,
        prompt: Prompt = None,
        sampling_params: Params = None,
        input_ids: Any = None,
        return_logprob: Any = False,
        logprob_start_len: Any = None,
        top_logprobs_num: Any = None,
        stream: bool = False,
        image_data: Any = None,
        lora_path: Any = None,
    ) -> Any:
        """Generate for one prompt or a batch; with stream=True, an iterator of incremental chunks.
        `lora_path`: a served LoRA adapter's name (a list: one per prompt); None: the base model.
        Without streaming, each prompt is submitted once its images are prepared, while later
        prompts' images are still being prepared; a bad image raises its ValueError (the call's
        requests already submitted are aborted). Streaming prepares every image first, so any
        such error is raised here, before the iterator is returned."""
        plan = self.plan_requests(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            stream,
            image_data=image_data,
            lora_path=lora_path,
        )
        if stream:
            return self._stream(RequestPlan.ready(plan.all()))
        accs = {rid: acc for rid, acc, _ in self._iterate(plan)}
        results = [accs[rid].result() for rid in plan.rids]
        return results if plan.batched else results[0]

    def _stream(self, plan: RequestPlan) -> Iterator[dict]:
        index = {rid: i for i, rid in enumerate(plan.rids)}
        for rid, acc, out in self._iterate(plan):
            yield acc.chunk(out, index=index[rid])

    def _iterate(self, plan: RequestPlan) -> Iterator[tuple[str, OutputAccumulator, ReqOutput]]:
        """Submit the plan's requests prompt by prompt as each is ready, then yield (rid,
        accumulator, message) after every message until all are done (messages arriving
        meanwhile wait in the inbox). A prompt's ValueError propagates; requests submitted and
        not finished when the iterator ends early are aborted."""
        inbox: queue.Queue = queue.Queue()
        accs = {rid: OutputAccumulator(rid) for rid in plan.rids}
        submitted: list[str] = []
        try:
            for reqs in plan:
                for r in reqs:
                    self.client.submit(r, inbox.put)
                    submitted.append(r.rid)
            pending = len(submitted)
            while pending:
                out: ReqOutput = inbox.get()
                if accs[out.rid].add(out):
                    pending -= 1
                yield out.rid, accs[out.rid], out
        finally:
            for rid in submitted:  # never abort an id we did not submit (it may be someone else's)
                if not accs[rid].done:
                    self.client.abort(rid)

    def encode(
        self, prompt: Prompt = None, input_ids: Any = None, dimensions: Optional[int] = None, rid: Any = None
    ) -> Any:
        """Embeddings of a text, a list of texts, token ids or a list of token-id lists (needs
        is_embedding): `{"embedding": [float], "meta_info": {...}}` for one input, a list of them
        for a list. `dimensions` truncates (Matryoshka models only) before any normalisation."""
        reqs, batched = self.make_embedding_requests(prompt, input_ids, dimensions, rid)
        accs = {rid: acc for rid, acc, _ in self._iterate(RequestPlan.ready(reqs))}
        results = [accs[r.rid].embedding_result() for r in reqs]
        return results if batched else results[0]

    async def async_generate(
        self,
        prompt: Prompt = None,
        sampling_params: Params = None,
        input_ids: Any = None,
        return_logprob: Any = False,
        logprob_start_len: Any = None,
        top_logprobs_num: Any = None,
        stream: bool = False,
        image_data: Any = None,
        lora_path: Any = None,
    ) -> Any:
        """Like `generate`, awaitable (images awaited, never blocked on); with stream=True
        returns an async iterator of chunks."""
        plan = self.plan_requests(
            prompt,
            sampling_params,
            input_ids,
            return_logprob,
            logprob_start_len,
            top_logprobs_num,
            stream,
            image_data=image_data,
            lora_path=lora_path,
        )
        if stream:
            return self._astream(RequestPlan.ready(await plan.aall()))
        results = {}
        async for rid, acc in self.iterate_async(plan):
            if acc.done:
                results[rid] = acc.result()
        ordered = [results[rid] for rid in plan.rids]
        return ordered if plan.batched else ordered[0]

    async def _astream(self, plan: RequestPlan) -> AsyncIterator[dict]:
        async for _, acc in self.iterate_async(plan):
            yield acc.last_chunk

    async def iterate_async(
        self, reqs: Union[list[TokenizedGenerateReq], RequestPlan]
    ) -> AsyncIterator[tuple[str, OutputAccumulator]]:
        """Submit `reqs` (a plan: prompt by prompt as each is ready) and yield (rid, accumulator)
        after every message; `acc.last_chunk` holds the incremental chunk. A plan's ValueError
        propagates; requests not finished when the iterator is closed are aborted."""
        plan = reqs if isinstance(reqs, RequestPlan) else RequestPlan.ready(reqs)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        accs = {rid: OutputAccumulator(rid) for rid in plan.rids}
        order = {rid: i for i, rid in enumerate(plan.rids)}
        submitted: list[str] = []
        try:
            async for ready in plan.aiter():
                for r in ready:
                    self.client.submit(r, _loop_putter(loop, inbox))
                    submitted.append(r.rid)
            pending = len(submitted)
            while pending:
                out: ReqOutput = await inbox.get()
                acc = accs[out.rid]
                if acc.add(out):
                    pending -= 1
                acc.last_chunk = acc.chunk(out, index=order[out.rid])
                yield out.rid, acc
        finally:
            for rid in submitted:  # never abort an id we did not submit (it may be someone else's)
                if not accs[rid].done:
                    self.client.abort(rid)

    # -- control -----------------------------------------------------------------------
    def abort(self, rid: str) -> None:
        """Finish request `rid` with finish_reason "abort" if it is running; otherwise nothing."""
        self.client.abort(rid)

    @property
    def death_reason(self) -> Optional[str]:
        """None while the engine can serve; once a process of it has exited outside `shutdown()`,
        why (the first line names the exit). Read it before `shutdown()`, which ends them on purpose."""
        return self.client.dead

    def is_alive(self) -> bool:
        """True while the engine can serve requests (no process died, the scheduler runs)."""
        return self.client.dead is None and self.client.process.is_alive()

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return apply_chat_template(self.tokenizer, messages, add_generation_prompt=add_generation_prompt)

    def load_lora_adapter(self, lora_name: str, lora_path: str) -> dict[str, str]:
        """Load a PEFT adapter at run time under `lora_name`; returns {name: path} of the served
        adapters. ValueError
        for a bad adapter, a taken name, or a server started without LoRA (enable_lora)."""
        return self._lora_call("load_lora_adapter", lora_name=lora_name, lora_path=lora_path)

    def unload_lora_adapter(self, lora_name: str) -> dict[str, str]:
        """Unload adapter `lora_name`; ValueError when it is unknown or still used by a request,
        or with dp_size > 1 (a replica still running a request on it would refuse while the
        others unload, leaving the replicas disagreeing on the served adapters)."""
        if self.server_args.dp_size > 1:
            raise ValueError("unloading LoRA adapters at run time is not supported with dp_size > 1 yet")
        return self._lora_call("unload_lora_adapter", lora_name=lora_name)

    def _lora_call(self, method: str, **kwargs: str) -> dict[str, str]:
        if self.lora_adapters is None:
            raise ValueError("this server serves no LoRA adapters: start it with enable_lora / --enable-lora")
        try:
            names = self.client.rpc(method, **kwargs)
        except RuntimeError as exc:
            raise ValueError(str(exc).removeprefix("replica 0: ")) from None
        names = names[0] if self.server_args.dp_size > 1 else names
        self.lora_adapters = frozenset(names)
        return dict(names)

    def flush_cache(self) -> bool:
        return bool(self.client.rpc("flush_cache"))

    def get_server_info(self) -> dict:
        return {**self.client.rpc("get_info"), "model_path": self.server_args.model_path}

    def check_no_leak(self) -> None:
        """Raise AssertionError unless every KV slot is free or held by the radix tree (idle only)."""
        try:
            self.client.rpc("check_leak")
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def shutdown(self) -> None:
        if self.images is not None:
            self.images.close()
        self.client.shutdown()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        client = getattr(self, "client", None)
        if client is not None and client.process.is_alive():
            client.process.kill()
