"""`RequestBuilder`: how `Engine` turns a call's arguments into scheduler requests in the
caller's process: tokenize, check every argument against the runtime's limits, the served LoRA
adapters, the constraint backends and the request ids in flight (ValueError naming the problem),
and plan each prompt's requests while its images are prepared."""

from __future__ import annotations

import functools
import uuid
from typing import Any, Optional, Protocol, Union

from radixlm.constrained.router import GrammarRouter
from radixlm.constrained.spec import GrammarSpec
from radixlm.entrypoints.engine_args import check_list_lengths as _check_list_lengths
from radixlm.entrypoints.engine_args import pick as _pick
from radixlm.entrypoints.engine_args import sibling_params as _sibling_params
from radixlm.entrypoints.request_plan import PendingPrompt, RequestPlan
from radixlm.ipc.messages import TokenizedGenerateReq
from radixlm.ipc.validation import RuntimeLimits, validate_request
from radixlm.model_loader.pooling_config import PoolingConfig, check_dimensions
from radixlm.multimodal.processor import ImagePreprocessor
from radixlm.sampling.sampling_params import SamplingParams

Prompt = Union[str, list[str], None]
Params = Union[dict, list[dict], None]


class InFlight(Protocol):
    """The runtime client's view of the requests it runs."""

    def has_request(self, rid: str) -> bool:
        """True while `rid` is submitted and not finished."""
        ...


class RequestBuilder:
    """Builds one engine's requests. Holds no request state: every call checks its arguments
    whole before any request leaves (`plan` defers only what needs a prompt's images).
    `lora_adapters` names the served adapters (None: LoRA off); the engine replaces it whole
    after loading or unloading one."""

    def __init__(
        self,
        *,
        tokenizer: Any,
        images: Optional[ImagePreprocessor],
        limits: RuntimeLimits,
        grammars: GrammarRouter,
        in_flight: InFlight,
        pooling: Optional[PoolingConfig],
        model_config: Any,
        lora_adapters: Optional[frozenset[str]],
    ) -> None:
        self.tokenizer = tokenizer  # None with skip_tokenizer_init: token ids only
        self.images = images  # None for a text-only model
        self.limits = limits
        self.grammars = grammars
        self.in_flight = in_flight
        self.pooling = pooling  # None unless the engine serves an embedding model
        self.model_config = model_config
        self.lora_adapters = lora_adapters

    def plan(
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
        """What `Engine.plan_requests` returns (its docstring states the contract)."""
        if self.pooling is not None:
            raise ValueError(
                "this server serves an embedding model (is_embedding / --is-embedding): generation is not "
                "available; use /v1/embeddings, /encode or Engine.encode"
            )
        ids_list, batched = self._token_ids(prompt, input_ids)
        images_list = self._images_per_prompt(image_data, len(ids_list), batched)
        params_list = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(ids_list)
        if len(params_list) != len(ids_list):
            raise ValueError(f"got {len(params_list)} sampling_params for {len(ids_list)} prompts")
        _check_list_lengths(
            len(ids_list),
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            rid=rid,
            lora_path=lora_path,
        )
        self.check_lora_path(lora_path)
        fields = dict(
            stream=stream,
            return_logprob=return_logprob,
            logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num,
            lora_path=lora_path,
        )
        specs = self._prompt_specs(ids_list, params_list, images_list, rid)
        all_rids = [r for spec in specs for r in spec[3]]
        self._check_rids(all_rids)
        prompts = []
        for i, ids, params, rids, group in specs:
            future = self.images.submit(ids, images_list[i]) if images_list[i] else None
            build = functools.partial(self._prompt_requests, i, ids, params, rids, group, fields)
            prompts.append(PendingPrompt(future, build))
        return RequestPlan(prompts, all_rids, batched or any(spec[2].n > 1 for spec in specs))

    def _prompt_specs(
        self, ids_list: list[list[int]], params_list: list, images_list: list[list[Any]], rid: Any
    ) -> list[tuple[int, list[int], SamplingParams, list[str], Optional[str]]]:
        """Per prompt (index, ids, params, its request ids, its n>1 sibling group or None), its
        params and constraint checked, and a text prompt's length (an image prompt's needs its
        expanded ids: checked when its requests are built)."""
        specs = []
        for i, (ids, raw) in enumerate(zip(ids_list, params_list)):
            params = SamplingParams.from_dict(raw or {})
            if not images_list[i]:
                validate_request(ids, params, self.limits)
            self._check_constraint(params)
            base = _pick(rid, i, None) or uuid.uuid4().hex
            rids = [f"{base}-{j}" for j in range(params.n)] if params.n > 1 else [base]
            specs.append((i, ids, params, rids, base if params.n > 1 else None))
        return specs

    def _prompt_requests(
        self,
        i: int,
        ids: list[int],
        params: SamplingParams,
        rids: list[str],
        group: Optional[str],
        fields: dict,
        prepared: Any,
    ) -> list[TokenizedGenerateReq]:
        """The requests of prompt `i` (one per rid, siblings of `group` when n > 1), its images'
        `PreparedPrompt` (None: a text prompt, already validated) given."""
        lps = _pick(fields["logprob_start_len"], i, -1)
        ids, images = (ids, None) if prepared is None else self._with_images(prepared, params, lps)
        return [
            TokenizedGenerateReq(
                rid=r,
                input_ids=ids,
                params=_sibling_params(params, j),
                stream=fields["stream"],
                return_logprob=_pick(fields["return_logprob"], i, False),
                logprob_start_len=lps,
                top_logprobs_num=_pick(fields["top_logprobs_num"], i, 0),
                prefix_group=group,
                images=images,
                lora_name=_pick(fields["lora_path"], i, None) or None,
            )
            for j, r in enumerate(rids)
        ]

    def embedding_requests(
        self, prompt: Prompt, input_ids: Any, dimensions: Optional[int] = None, rid: Any = None
    ) -> tuple[list[TokenizedGenerateReq], bool]:
        """`Engine.make_embedding_requests`: prefill-only requests the scheduler pools; a ValueError
        names the problem, also when this engine does not serve an embedding model."""
        if self.pooling is None:
            raise ValueError("embeddings need an embedding model served with is_embedding / --is-embedding")
        check_dimensions(self.pooling, dimensions, self.model_config.hidden_size)
        ids_list, batched = self._token_ids(prompt, input_ids)
        _check_list_lengths(len(ids_list), rid=rid)
        params = SamplingParams(max_new_tokens=0)
        reqs = []
        for i, ids in enumerate(ids_list):
            validate_request(ids, params, self.limits)
            base = _pick(rid, i, None) or uuid.uuid4().hex
            reqs.append(TokenizedGenerateReq(rid=base, input_ids=ids, params=params, embed_dimensions=dimensions))
        self._check_rids([r.rid for r in reqs])
        return reqs, batched

    def _images_per_prompt(self, image_data: Any, count: int, batched: bool) -> list[list[Any]]:
        """One list of images per prompt (empty when it has none)."""
        if image_data is None:
            return [[] for _ in range(count)]
        if self.images is None:
            raise ValueError("the served model accepts text only: image inputs need a vision model")
        if not batched:
            return [image_data if isinstance(image_data, list) else [image_data]]
        if not isinstance(image_data, list) or len(image_data) != count:
            raise ValueError(f"image_data for a batch of {count} prompts needs one entry per prompt")
        return [[] if x is None else (x if isinstance(x, list) else [x]) for x in image_data]

    def _with_images(
        self, prepared: Any, params: SamplingParams, logprob_start_len: Any
    ) -> tuple[list[int], Optional[list]]:
        """A prompt's ids with its image placeholders expanded and hash-padded, and its images
        (`prepared`: its `PreparedPrompt`), validated at the expanded length."""
        last = prepared.images[-1]
        if logprob_start_len not in (None, -1) and logprob_start_len < last.offset + last.length:
            raise ValueError(
                f"prompt logprobs must start after the last image: logprob_start_len >= {last.offset + last.length}"
            )
        validate_request(prepared.check_ids, params, self.limits)
        return prepared.input_ids, prepared.images

    def check_lora_path(self, lora_path: Any) -> None:
        """Every adapter name in `lora_path` (a name, a list of names / None, or None) must be
        served: ValueError naming the first one that is not."""
        names = lora_path if isinstance(lora_path, list) else [lora_path]
        for name in names:
            if name is None or name == "":
                continue
            if not isinstance(name, str):
                raise ValueError(f"lora_path must be an adapter name (a string), got {name!r}")
            if self.lora_adapters is None:
                raise ValueError(f"LoRA adapter {name!r} requested, but this server serves no adapters (--lora-paths)")
            if name not in self.lora_adapters:
                raise ValueError(f"LoRA adapter {name!r} is not loaded (loaded: {sorted(self.lora_adapters)})")

    def _check_rids(self, rids: list[str]) -> None:
        """Request ids route outputs and aborts: they must be unique, also against those in flight."""
        if len(set(rids)) != len(rids):
            raise ValueError("request ids (rid) must be distinct; pass one rid per prompt")
        taken = [rid for rid in rids if self.in_flight.has_request(rid)]
        if taken:
            raise ValueError(f"request id {taken[0]!r} is already in use by a running request")

    def _check_constraint(self, params: SamplingParams) -> None:
        """A bad regex / JSON schema / EBNF grammar, or one no backend would fully enforce, is a
        ValueError naming the problem (checks are cheap and cached; compiling happens later, off
        the scheduler loop)."""
        spec = GrammarSpec.from_params(params)
        if spec is not None:
            self.grammars.resolve(spec)

    def _token_ids(self, prompt: Prompt, input_ids: Any) -> tuple[list[list[int]], bool]:
        """Each prompt's token ids (text encoded by the tokenizer) and whether the call gave a batch."""
        if (prompt is None) == (input_ids is None):
            raise ValueError("pass exactly one of prompt or input_ids")
        if input_ids is not None:
            batched = bool(input_ids) and isinstance(input_ids[0], list)
            return (input_ids if batched else [input_ids]), batched
        if self.tokenizer is None:
            raise ValueError("skip_tokenizer_init is set: pass input_ids, not text")
        batched = isinstance(prompt, list)
        prompts = prompt if batched else [prompt]
        if not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompt must be a string or a list of strings")
        return [self.tokenizer.encode(p) for p in prompts], batched
