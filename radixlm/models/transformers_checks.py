"""What the Transformers backend cannot serve exactly, refused at start-up with the reason.

radixlm's attention backends implement causal softmax attention over each request's whole
sequence with one scale: no logit soft-capping, no sliding window, no attention sinks, no
ALiBi, no bidirectional attention, and no recurrent (linear-attention / state-space) layers.
A model needing any of these would silently give wrong tokens, so it is rejected instead.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from torch import nn

from radixlm.models.registry import supported_architectures

_ATTENTION_LAYER_TYPES = {"full_attention", "sliding_attention"}


def check_config_supported(config: Any, context_len: Optional[int] = None) -> None:
    """ValueError naming the first config feature radixlm's attention cannot honour when serving
    sequences of up to `context_len` tokens (default: the config's max_position_embeddings)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    name = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(f"{name} is an encoder-decoder model; radixlm serves decoder-only causal LMs only")
    softcap = getattr(text, "attn_logit_softcapping", None)
    if softcap:
        raise ValueError(
            f"{name} soft-caps attention logits (attn_logit_softcapping={softcap}), which radixlm's attention "
            "backends do not implement; to serve it without soft-capping set attn_logit_softcapping to null in "
            "config.json (outputs then differ from the reference)"
        )
    if getattr(text, "use_bidirectional_attention", False) or getattr(text, "alibi", False):
        raise ValueError(
            f"{name} uses bidirectional or ALiBi attention, which radixlm's attention backends do not implement"
        )
    other = sorted(set(getattr(text, "layer_types", None) or []) - _ATTENTION_LAYER_TYPES)
    if other:
        raise ValueError(
            f"{name} has {other} layers, which need a recurrent state cache radixlm does not have; "
            "only attention layers can be served"
        )
    _check_sliding_window(text, name, context_len or getattr(text, "max_position_embeddings", None))


def _check_sliding_window(text: Any, name: str, context_len: Optional[int]) -> None:
    """A window no shorter than the context never drops a key, so then full attention is exact."""
    window = getattr(text, "sliding_window", None)
    if not window or getattr(text, "use_sliding_window", True) is False:
        return
    layer_types = getattr(text, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return
    if context_len is None or window < context_len:
        raise ValueError(
            f"{name} uses sliding-window attention (sliding_window={window}) and the context length is "
            f"{context_len}; radixlm's attention backends do not implement sliding windows, so serve it with "
            f"context_length <= {window} (--context-length {window}), where full attention is exact"
        )


def check_model_supported(hf_model: nn.Module) -> None:
    """ValueError when the built model bypasses transformers' attention interface or has sinks."""
    cls = type(hf_model)
    if not cls.is_backend_compatible():
        raise ValueError(
            f"{cls.__name__} does not route attention through transformers' AttentionInterface, so "
            "model_impl='transformers' cannot drive it on radixlm's KV cache; it has no native radixlm "
            "implementation either"
        )
    sinks = [n for n, _ in hf_model.named_parameters() if n.endswith(".sinks")]
    if sinks:
        raise ValueError(
            f"{cls.__name__} uses attention sinks ({sinks[0]}), which radixlm's attention backends do not implement"
        )


@contextlib.contextmanager
def pointing_to_native(config: Any) -> Iterator[None]:
    """Re-raise a refusal (ValueError) of a model radixlm also implements natively with the
    native class and the setting that selects it appended."""
    try:
        yield
    except ValueError as exc:
        native = [a for a in getattr(config, "architectures", None) or [] if a in supported_architectures()]
        if not native:
            raise
        raise ValueError(
            f"{exc}; radixlm has a native implementation of this model, {native[0]}: serve it with "
            "--model-impl radixlm (model_impl='radixlm', or 'auto', the default)"
        ) from exc
