"""A request as the scheduler sees it: its tokens, where its KV lives, and its progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from radixlm.ipc.finish import FinishReason
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.sampling.seeding import derive_step_seed


@dataclass
class LogprobState:
    """Logprobs collected so far; entries are (logprob, token_id) and top lists of those."""

    input_token_logprobs: list = field(default_factory=list)
    input_top_logprobs: list = field(default_factory=list)
    output_token_logprobs: list = field(default_factory=list)
    output_top_logprobs: list = field(default_factory=list)


# Token ids (and the image pad ids, < vocab + 2**30) stay below 2**32: a tag above never collides.
KEY_TAG_SHIFT = 32


class Req:
    """One sequence being generated.

    KV invariant: `req_to_token[req_pool_idx, :kv_len]` are this request's KV slots; the first
    `tree_len` of them belong to the radix tree (kept alive by the lock on `last_node`), the
    rest `[tree_len, kv_len)` are owned by the request and freed when it finishes or retracts.

    `params` never change once the request exists: `uses_penalties` and `plain_greedy` are
    derived from them here, once, instead of on every step.
    """

    def __init__(
        self,
        rid: str,
        input_ids: list[int],
        params: SamplingParams,
        *,
        stream: bool = False,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        prefix_group: Optional[str] = None,
        step_seed_base: Optional[int] = None,
        embed_dimensions: Optional[int] = None,
        full_prefill: bool = False,
        images: Optional[list[Any]] = None,
        lora_uid: int = 0,
    ) -> None:
        self.rid = rid
        self.origin_input_ids = list(input_ids)
        self.prompt_len = len(self.origin_input_ids)  # never changes: seq_len is on every hot path
        self.params = params
        # Penalties read the previous tokens' values on the host; plain greedy is an argmax of the raw logits.
        self.uses_penalties = bool(
            params.repetition_penalty != 1.0 or params.frequency_penalty or params.presence_penalty
        )
        self.plain_greedy = params.is_greedy and not self.uses_penalties and not params.logit_bias
        self.stream = stream
        self.return_logprob = return_logprob
        self.logprob_start_len = len(input_ids) if logprob_start_len < 0 else logprob_start_len
        self.top_logprobs_num = top_logprobs_num
        self.prefix_group = prefix_group
        self.seed = params.seed if step_seed_base is None else step_seed_base
        self.output_ids: list[int] = []
        self.req_pool_idx: Optional[int] = None
        self.tree_len = 0
        self.kv_len = 0
        self.last_node: Any = None
        self.cached_tokens = 0
        self.finished_reason: Optional[FinishReason] = None
        self.logprobs = LogprobState()
        self.detok: Any = None  # incremental detokenizer, for requests that need text before they finish
        self.final_decoder: Any = None  # the others' decoder: their text is decoded once, at the end
        self.stop_matcher: Any = None
        self.sent_text_len = 0
        self.sent_ids = 0
        self.num_retractions = 0
        self.kv_slots: list[int] = []  # slot of each position < kv_len (host copy of its table row)
        self.pending_tokens = 0  # placeholder ids at the end of output_ids: sampled on device, not yet read
        self.last_slot = 0  # slot of position kv_len-1 (pages continue from it)
        self.error: Optional[str] = None
        self.grammar: Any = None  # the request's matcher (radixlm.constrained) once compiled
        self.jump_forward_tokens = 0  # output tokens appended by jump-forward, not sampled
        # Speculative decoding (radixlm.speculative.stats): verify steps, drafts kept, tokens they emitted.
        self.spec_verify_ct = self.spec_accepted_tokens = self.spec_decode_tokens = 0
        # Embedding mode (see scheduler.pooler): no cached prefix when every token's hidden state
        # is pooled; the pooled state so far; the finished vector; its Matryoshka truncation.
        self.full_prefill = full_prefill
        self.pool_state: Any = None
        self.embedding: Optional[list[float]] = None
        self.embed_dimensions = embed_dimensions
        self.images = images  # ImageInputs whose spans the prompt's pad ids mark (radixlm.multimodal)
        # The LoRA adapter (uid, 0 = base). Its radix-tree keys start with a tagged first id, so
        # KV computed under one adapter is never matched by another adapter or the base model.
        self.lora_uid, self.key_tag = 0, 0
        self.use_adapter(lora_uid)

    @property
    def fill_ids(self) -> list[int]:
        """Every token the model has seen or will see next: prompt then output."""
        return self.origin_input_ids + self.output_ids

    def fill_slice(self, start: int, end: int) -> list[int]:
        """`fill_ids[start:end]` for 0 <= start <= end, without building the whole of `fill_ids`."""
        n = self.prompt_len
        if end <= n:
            return self.origin_input_ids[start:end]
        if start >= n:
            return self.output_ids[start - n : end - n]
        return self.origin_input_ids[start:] + self.output_ids[: end - n]

    def use_adapter(self, lora_uid: int) -> None:
        """Generate with LoRA adapter `lora_uid` (0: the base model); only before any KV exists."""
        assert self.kv_len == 0, "a request's adapter is fixed once it has KV"
        self.lora_uid, self.key_tag = lora_uid, lora_uid << KEY_TAG_SHIFT

    def tree_key(self, end: int) -> list[int]:
        """The radix-tree key of the first `end` tokens: `fill_slice(0, end)` with the first id
        shifted into the adapter's namespace (unchanged for the base model)."""
        key = self.fill_slice(0, end)
        if self.key_tag and key:
            key[0] += self.key_tag
        return key

    @property
    def last_token(self) -> int:
        """The newest token (without building `fill_ids`, which copies the whole sequence)."""
        return self.output_ids[-1] if self.output_ids else self.origin_input_ids[-1]

    @property
    def seq_len(self) -> int:
        return self.prompt_len + len(self.output_ids)

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def step_seed(self) -> Optional[int]:
        """Seed for sampling the next token: depends only on the request, never on the batch."""
        if self.seed is None:
            return None
        return derive_step_seed(self.seed, len(self.output_ids))

    def wants_prompt_logprobs(self) -> bool:
        return self.return_logprob and not self.output_ids and self.logprob_start_len < len(self.origin_input_ids)
