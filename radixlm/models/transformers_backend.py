"""Serve any Hugging Face causal LM on radixlm's KV pool, scheduler and attention backends.

The model is built by transformers (`AutoModelForCausalLM.from_config`) on the meta device
with `attn_implementation` set to radixlm's registered attention function (hf_attention.py),
materialized on the target device, and filled by radixlm's loader. Every attention layer then
reads and writes the paged KV pool through the selected `AttentionBackend`, so prefix caching,
continuous batching and chunked prefill work unchanged.

What radixlm's attention cannot express is refused at construction (`transformers_checks.py`).
"""

from __future__ import annotations

import copy
import logging
import re
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.forward.batch import ForwardBatch
from radixlm.layers.linear import float_into
from radixlm.models.hf_attention import STEP_KWARG, StepContext, register_attention
from radixlm.models.transformers_checks import check_config_supported, check_model_supported, pointing_to_native

logger = logging.getLogger(__name__)

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


class TransformersForCausalLM(nn.Module):
    """A transformers `*ForCausalLM` behind radixlm's native-model interface.

    `forward(input_ids [T], positions [T], batch) -> hidden [T, hidden]` runs the decoder on
    one packed sequence ([1, T]); `compute_logits(hidden) -> float32 logits` applies the LM head
    and the architecture's logit post-processing; `load_weights` takes HF-named tensors and
    requires every parameter to be set. Invariant: `hf.config._attn_implementation` is
    radixlm's attention function for the model's whole life.
    """

    def __init__(self, hf_model: nn.Module, backend: AttentionBackend) -> None:
        super().__init__()
        self.hf = hf_model
        self.backend = backend
        self.config = hf_model.config
        self._logit_fns = _logit_postprocessing(hf_model)

    @classmethod
    def create(
        cls,
        config: Any,
        backend: AttentionBackend,
        dtype: torch.dtype,
        device: torch.device,
        trust_remote_code: bool = False,
        context_len: Optional[int] = None,
    ) -> "TransformersForCausalLM":
        """Build on meta, materialize on `device` (weights uninitialized: load them next), re-tie
        tied weights and recompute non-persistent buffers (rotary `inv_freq`, embedding scales).
        ValueError, naming the reason, for models radixlm's attention cannot run exactly up to
        `context_len` tokens (transformers_checks.py)."""
        config = copy.deepcopy(config)  # transformers writes dtype / attention choice into it
        with pointing_to_native(config):
            check_config_supported(config, context_len)
            hf_model = _from_config(config, dtype, register_attention(), trust_remote_code)
            check_model_supported(hf_model)
        hf_model.to_empty(device=device)
        hf_model.tie_weights()  # to_empty replaced each tied parameter with its own tensor
        _init_non_persistent_buffers(hf_model)
        logger.info(
            "Transformers backend: %s with attention through radixlm's %s",
            type(hf_model).__name__,
            type(backend).__name__,
        )
        return cls(hf_model.eval(), backend)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        out = self.hf.base_model(
            input_ids=input_ids.unsqueeze(0),
            position_ids=positions.unsqueeze(0),
            use_cache=False,
            **{STEP_KWARG: StepContext(self.backend, batch)},
        )
        return out.last_hidden_state[0]

    def compute_logits(self, hidden: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = self.hf.get_output_embeddings()(hidden)
        for fn in self._logit_fns:
            logits = fn(logits)
        return float_into(logits, out)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named tensors into the model; every parameter and persistent buffer must be set
        (tied aliases count once; names transformers itself ignores are skipped)."""
        targets = dict(self.hf.named_parameters(remove_duplicate=False))
        targets.update(_persistent_buffers(self.hf))
        rename = _checkpoint_renamer(self.hf, targets)
        ignore_unexpected = _patterns(self.hf, "_keys_to_ignore_on_load_unexpected")
        loaded: set[int] = set()
        with torch.no_grad(), pointing_to_native(self.config):
            for name, tensor in weights:
                target = targets.get(rename(name))
                if target is None:
                    if name.endswith("rotary_emb.inv_freq") or ignore_unexpected(name):
                        continue
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self.hf).__name__}")
                if target.shape != tensor.shape:
                    raise ValueError(
                        f"shape mismatch for {name!r}: model {tuple(target.shape)} vs checkpoint {tuple(tensor.shape)}"
                    )
                target.copy_(tensor)
                loaded.add(id(target))
            self._check_complete(targets, loaded)

    def _check_complete(self, targets: dict[str, torch.Tensor], loaded: set[int]) -> None:
        ignore_missing = _patterns(self.hf, "_keys_to_ignore_on_load_missing")
        missing = [n for n, t in targets.items() if id(t) not in loaded and not ignore_missing(n)]
        if missing:
            raise ValueError(f"checkpoint is missing tensors for: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def _from_config(config: Any, dtype: torch.dtype, attn_name: str, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(
                config, dtype=dtype, attn_implementation=attn_name, trust_remote_code=trust_remote_code
            )
    except ValueError as exc:
        if "trust_remote_code" in str(exc) and not trust_remote_code:
            raise ValueError(
                f"model_type {config.model_type!r} needs its own modeling code: "
                "set trust_remote_code=True (--trust-remote-code) to run it"
            ) from exc
        if "Unrecognized configuration class" in str(exc):
            raise ValueError(
                f"transformers has no causal-LM class for model_type {config.model_type!r} "
                "(encoder-decoder and non-generative models cannot be served)"
            ) from exc
        raise


def _checkpoint_renamer(hf_model: nn.Module, targets: dict[str, torch.Tensor]) -> Callable[[str], str]:
    """Checkpoint name -> model name with transformers' own renamings for this model (legacy names
    such as GPT-NeoX's `embed_out`, base-model prefix added or stripped). Conversions that merge
    or split tensors (e.g. per-expert MoE weights) are refused: the loader streams one tensor at a time."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    transforms = get_model_conversion_mapping(hf_model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    prefix = hf_model.base_model_prefix

    def rename(name: str) -> str:
        new_name, converter = rename_source_key(name, renamings, converters, prefix, targets)
        if converter is not None:
            raise ValueError(
                f"checkpoint tensor {name!r} needs transformers' weight conversion {converter!r} "
                "(tensors merged or split on load), which radixlm's loader does not apply"
            )
        return new_name

    return rename


def _init_non_persistent_buffers(hf_model: nn.Module) -> None:
    """Non-persistent buffers are computed in `__init__` and are not in checkpoints, so after
    `to_empty` they hold garbage; transformers' own `_init_weights` recomputes them (it is what
    `from_pretrained` relies on too). Parameters it touches are overwritten by the load."""
    for module in hf_model.modules():
        if module._non_persistent_buffers_set:
            hf_model._init_weights(module)


def _persistent_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for module_name, module in model.named_modules():
        for name, buf in module.named_buffers(recurse=False):
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[f"{module_name}.{name}" if module_name else name] = buf
    return out


def _patterns(model: nn.Module, attr: str) -> Callable[[str], bool]:
    regexes = [re.compile(p) for p in (getattr(model, attr, None) or [])]
    return lambda name: any(r.search(name) for r in regexes)


def _logit_postprocessing(hf_model: nn.Module) -> tuple[LogitsFn, ...]:
    """What the architecture's `*ForCausalLM.forward` does to the LM head's output, chosen once.

    Known forms: Gemma's final soft-capping, Granite's `logits_scaling` divisor, Cohere's
    `logit_scale` multiplier."""
    config = hf_model.config.get_text_config()
    fns: list[LogitsFn] = []
    scale = getattr(hf_model, "logit_scale", None)
    if isinstance(scale, (int, float)):
        fns.append(lambda x: x * scale)
    divisor = getattr(config, "logits_scaling", None)
    if divisor not in (None, 1, 1.0):
        fns.append(lambda x: x / divisor)
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        fns.append(lambda x: torch.tanh(x / cap) * cap)
    return tuple(fns)
