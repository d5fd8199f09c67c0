"""The attention function radixlm registers with transformers' `AttentionInterface`.

Every attention layer of a Transformers model calls it instead of SDPA/eager; it hands the
layer's q/k/v (already rotated by the model) to radixlm's attention backend, which writes k/v
into the paged KV pool (`rotate_and_store` with no rotary) and attends each new token to its
request's cached prefix plus the new tokens (causally).
The backend and the step's `ForwardBatch` arrive through the model's forward kwargs
(`radixlm_step=StepContext(...)`), which transformers passes down to the attention
function unchanged: no global state is involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.forward.batch import ForwardBatch

ATTENTION_NAME = "radixlm_paged"
STEP_KWARG = "radixlm_step"


@dataclass(frozen=True)
class StepContext:
    """What one model step's attention layers need: the backend and the step's batch."""

    backend: AttentionBackend
    batch: ForwardBatch


def radixlm_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: Optional[float] = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature over radixlm's backend.

    In: query [1, H, T, D], key/value [1, Hkv, T, D] (one packed sequence of all the batch's
    new tokens; `attention_mask` is ignored because the backend masks per request).
    Out: ([1, T, H, D], None). The layer index is the KV pool's layer index.
    """
    step: StepContext = kwargs.get(STEP_KWARG)
    if step is None:
        raise RuntimeError(
            f"{type(module).__name__} ran without `{STEP_KWARG}`: this model's forward "
            "does not pass its kwargs down to the attention function"
        )
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    q, k, v = (_last_dim_contiguous(x[0].transpose(0, 1)) for x in (query, key, value))
    layer, batch = module.layer_idx, step.batch
    q = step.backend.rotate_and_store(None, batch.positions, q, k, v, layer, batch)
    return step.backend.forward(q, layer, scaling, batch).unsqueeze(0), None


def _last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """The backends read any token/head strides but a unit stride along head_dim (HF models'
    [B, H, T, D] views have it; a model that does not gets a copy)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def register_attention() -> str:
    """Register `radixlm_attention` under `ATTENTION_NAME` (idempotent) and return the name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, radixlm_attention)
    return ATTENTION_NAME
