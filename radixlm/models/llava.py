"""LLaVA-1.5 (`LlavaForConditionalGeneration`): transformers' vision tower (CLIP), a two-layer
projector, and our native Llama / Mistral / Qwen2 language model on the paged KV cache.

During a prefill the batch's image slices (`ForwardBatch.mm_inputs`, see
`radixlm.multimodal.inputs`) are encoded and written over the embeddings of their placeholder
rows; batches without images (every decode) run the language model exactly as a text model."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch
from radixlm.layers.linear import copy_checked, whole
from radixlm.models.llama import LlamaForCausalLM, MistralForCausalLM
from radixlm.models.qwen2 import Qwen2ForCausalLM
from radixlm.multimodal.inputs import ImageInput, ImageSlice

_LANGUAGE_MODELS: dict[str, type] = {
    "llama": LlamaForCausalLM,
    "mistral": MistralForCausalLM,
    "qwen2": Qwen2ForCausalLM,
}

# checkpoint prefix -> ours (transformers >= 4.52 saves the first form, llava-hf the second)
_PREFIXES = (
    ("model.language_model.", "language_model.model."),
    ("model.vision_tower.", "vision_tower."),
    ("model.multi_modal_projector.", "multi_modal_projector."),
    ("lm_head.", "language_model.lm_head."),
    ("model.image_newline", "image_newline"),
)


class LlavaProjector(nn.Module):
    """Vision features → the language model's hidden size (linear, activation, linear)."""

    def __init__(self, config: Any) -> None:
        super().__init__()
        from transformers.activations import ACT2FN

        layers = config.vision_feature_layer
        width = config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
        hidden, bias = config.text_config.hidden_size, getattr(config, "multimodal_projector_bias", True)
        self.linear_1 = nn.Linear(width, hidden, bias=bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaForConditionalGeneration(nn.Module):
    """Same interface as `LlamaForCausalLM` (`forward` → hidden states, `compute_logits`,
    `load_weights`); tensor parallelism is refused (`check_mlp_split`)."""

    def __init__(self, config: Any, backend: AttentionBackend, tp: Optional[TPGroup] = None) -> None:
        super().__init__()
        from transformers import AutoModel

        tp = tp or TPGroup.single()
        self.check_mlp_split(config, tp.size, 1)
        self.config = config
        self.language_model = _language_class(config.text_config)(config.text_config, backend, tp)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaProjector(config)
        self.vocab_size = config.text_config.vocab_size
        self.feature_layer = config.vision_feature_layer
        self.drop_cls = getattr(config, "vision_feature_select_strategy", "default") == "default"

    @classmethod
    def check_mlp_split(cls, config: Any, tp_size: int, ep_size: int) -> None:
        if tp_size != 1 or ep_size != 1:
            raise ValueError(f"{cls.__name__} runs with tp_size=1 and ep_size=1 only (got {tp_size}, {ep_size})")

    def init_cache(self, device: torch.device) -> None:
        """Recompute the vision tower's non-persistent buffers (empty after meta construction)."""
        for name, buf in self.vision_tower.named_buffers():
            if not name.endswith("position_ids"):
                raise ValueError(f"vision tower buffer {name!r} has no known initial value")
            with torch.no_grad():
                buf.copy_(torch.arange(buf.shape[-1], device=buf.device).expand_as(buf))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        slices = batch.mm_inputs
        if not slices:
            return self.language_model(input_ids, positions, batch)
        embeds = self._merged_embeddings(input_ids, slices)
        return self.language_model.model.forward_embeds(embeds, positions, batch)

    def compute_logits(self, hidden: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.language_model.compute_logits(hidden, out)

    def _merged_embeddings(self, input_ids: torch.Tensor, slices: list[ImageSlice]) -> torch.Tensor:
        return merge_image_rows(
            self.language_model.model.embed_tokens, self.vocab_size, input_ids, slices, self.image_features
        )

    def image_features(self, images: list[ImageInput]) -> list[torch.Tensor]:
        """Per image, its [length, hidden] embedding rows (one encoder call for all)."""
        param = self.multi_modal_projector.linear_1.weight
        pixels = torch.stack([torch.from_numpy(img.pixel_values) for img in images]).to(param.device, param.dtype)
        return list(self.encode(pixels))

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[n, patches, hidden] of [n, 3, H, W] pixels: vision tower, feature layer(s), projector."""
        hidden = self.vision_tower(pixels, output_hidden_states=True).hidden_states
        layers = [self.feature_layer] if isinstance(self.feature_layer, int) else list(self.feature_layer)
        picked = [hidden[i][:, 1:] if self.drop_cls else hidden[i] for i in layers]
        return self.multi_modal_projector(torch.cat(picked, dim=-1))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """HF tensors (either checkpoint layout) into the language model (its own loader and
        completeness check), the vision tower and the projector; every parameter must be set."""
        params = dict(self.named_parameters())
        language, loaded = [], set()
        for name, tensor in weights:
            name = tower_param_name(_canonical(name), params)
            if name.startswith("language_model."):
                language.append((name[len("language_model.") :], tensor))
            elif name in params:
                copy_checked(params[name], whole(tensor), name)
                loaded.add(name)
            else:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
        self.language_model.load_weights(iter(language))
        missing = [n for n in params if not n.startswith("language_model.") and n not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing tensors for: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


def merge_image_rows(
    embed_tokens: nn.Module,
    vocab_size: int,
    input_ids: torch.Tensor,
    slices: list[ImageSlice],
    image_features: Callable[[list[ImageInput]], list[torch.Tensor]],
) -> torch.Tensor:
    """Token embeddings with each slice's image rows written over its placeholder rows (pad
    ids, >= vocab_size, are looked up as id 0 first and then overwritten). `image_features`
    encodes the slices' distinct images at once: per image, its [length, hidden] rows."""
    text_ids = torch.where(input_ids < vocab_size, input_ids, torch.zeros_like(input_ids))
    embeds = embed_tokens(text_ids)
    distinct: dict[int, int] = {}
    for s in slices:
        distinct.setdefault(id(s.image), len(distinct))
    images = list({id(s.image): s.image for s in slices}.values())
    features = image_features(images)
    for s in slices:
        embeds[s.row : s.row + s.count] = features[distinct[id(s.image)]][s.start : s.start + s.count]
    return embeds


def tower_param_name(name: str, params: dict[str, Any]) -> str:
    """A vision tower tensor's parameter name with or without the `vision_model.` level, as the
    installed transformers builds the tower (newer CLIP / SigLIP vision models have none);
    other names unchanged."""
    if name in params or not name.startswith("vision_tower."):
        return name
    rest = name[len("vision_tower.") :]
    inner = rest[len("vision_model.") :] if rest.startswith("vision_model.") else "vision_model." + rest
    return "vision_tower." + inner if "vision_tower." + inner in params else name


def _canonical(name: str) -> str:
    for theirs, ours in _PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name


def _language_class(text_config: Any) -> type:
    model_type = getattr(text_config, "model_type", None)
    if model_type not in _LANGUAGE_MODELS:
        raise ValueError(
            f"LLaVA with a {model_type!r} language model is not supported; supported: {sorted(_LANGUAGE_MODELS)}"
        )
    return _LANGUAGE_MODELS[model_type]
