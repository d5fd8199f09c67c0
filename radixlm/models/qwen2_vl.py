"""Qwen2-VL and Qwen2.5-VL (`Qwen2VLForConditionalGeneration`,
`Qwen2_5_VLForConditionalGeneration`): transformers' vision transformer (its blocks and patch
merger, on dynamic-resolution patches from the model's HF image processor) and our native
Qwen2 language model on the paged KV cache, whose rotary is M-RoPE (`radixlm.layers.mrope`).

Rotary positions (`radixlm.multimodal.mrope`): an extend batch carries the [3, T] rows of its
requests with images (`ForwardBatch.mrope_positions`, else every row's three positions are its
sequence index) and each request's `rope_delta` (`ForwardBatch.rope_deltas`). The model keeps
the deltas in a device table indexed by request-pool row, written at every extend (every
request extends before it decodes, and a reused row is overwritten then), so a decode step
rotates at `position + delta` with no per-step host data: CUDA graphs capture it as is."""

from __future__ import annotations

import copy
import importlib
from typing import Any, Iterable, Optional

import torch
from torch import nn

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.forward.batch import ForwardBatch, ForwardMode
from radixlm.forward.device_copy import pinned_to_device
from radixlm.layers.linear import copy_checked, whole
from radixlm.layers.mrope import MRotaryEmbedding
from radixlm.models.llama import _rope_parameters
from radixlm.models.llava import merge_image_rows
from radixlm.models.qwen2 import Qwen2Attention, Qwen2DecoderLayer, Qwen2ForCausalLM, Qwen2Model
from radixlm.models.qwen2_vl_vision import QwenVisionEncoder
from radixlm.multimodal.inputs import ImageInput
from radixlm.multimodal.pixel_codes import decode_torch, decode_torch_batch

# checkpoint prefix -> ours (transformers >= 4.52 saves these; Qwen's own checkpoints already use ours)
_PREFIXES = (
    ("model.visual.", "visual."),
    ("model.language_model.", "model."),
)


class Qwen2VLAttention(Qwen2Attention):
    """Qwen2 attention rotating q and k with M-RoPE."""

    def __init__(self, config: Any, layer_id: int, backend: AttentionBackend, tp: TPGroup) -> None:
        super().__init__(config, layer_id, backend, tp)
        rope = _rope_parameters(config)
        section = rope.get("mrope_section")
        if section is None:
            raise ValueError("a Qwen2-VL text config needs rope_parameters['mrope_section']")
        self.rotary = MRotaryEmbedding(self.head_dim, config.max_position_embeddings, rope, section)


class Qwen2VLDecoderLayer(Qwen2DecoderLayer):
    attention_cls = Qwen2VLAttention


class Qwen2VLTextModel(Qwen2Model):
    layer_cls = Qwen2VLDecoderLayer


class Qwen2VLLanguageModel(Qwen2ForCausalLM):
    model_cls = Qwen2VLTextModel


class Qwen2VLForConditionalGeneration(nn.Module):
    """Same interface as `LlamaForCausalLM` (`forward` → hidden states, `compute_logits`,
    `load_weights`); tensor parallelism is refused (`check_mlp_split`)."""

    vision_class = ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VisionTransformerPretrainedModel")

    def __init__(self, config: Any, backend: AttentionBackend, tp: Optional[TPGroup] = None) -> None:
        super().__init__()
        tp = tp or TPGroup.single()
        self.check_mlp_split(config, tp.size, 1)
        self.config = config
        text = copy.copy(config.text_config)
        text.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        self.language_model = Qwen2VLLanguageModel(text, backend, tp)
        module, name = self.vision_class
        self.visual = getattr(importlib.import_module(module), name)._from_config(config.vision_config)
        self.vision_encoder = QwenVisionEncoder(self.visual)  # runs self.visual's modules, batched attention
        self.vocab_size = text.vocab_size
        self.rope_deltas: Optional[torch.Tensor] = None  # [request-pool rows] int64, made at the first forward

    @classmethod
    def check_mlp_split(cls, config: Any, tp_size: int, ep_size: int) -> None:
        if tp_size != 1 or ep_size != 1:
            raise ValueError(f"{cls.__name__} runs with tp_size=1 and ep_size=1 only (got {tp_size}, {ep_size})")

    def init_cache(self, device: torch.device) -> None:
        """Recompute the vision rotary's non-persistent buffers (empty after meta construction),
        in float32 as transformers builds them."""
        rotary = self.visual.rotary_pos_emb
        fresh = dict(type(rotary)(self.config.vision_config).named_buffers())
        for name, _ in self.visual.named_buffers():
            local = name.removeprefix("rotary_pos_emb.")
            if local not in fresh:
                raise ValueError(f"vision tower buffer {name!r} has no known initial value")
            rotary.register_buffer(local, fresh[local].float().to(device), persistent=False)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        rotary = self._rotary_positions(positions, batch)
        if not batch.mm_inputs:
            return self.language_model(input_ids, rotary, batch)
        embed = self.language_model.model.embed_tokens
        embeds = merge_image_rows(embed, self.vocab_size, input_ids, batch.mm_inputs, self.image_features)
        return self.language_model.model.forward_embeds(embeds, rotary, batch)

    def compute_logits(self, hidden: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.language_model.compute_logits(hidden, out)

    def _rotary_positions(self, positions: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """[T] or [3, T] rotary positions of the batch's rows; an extend records its requests'
        deltas, a decode adds them."""
        rows = batch.req_to_token.shape[0]
        if self.rope_deltas is None or self.rope_deltas.shape[0] < rows:
            self.rope_deltas = torch.zeros(rows, dtype=torch.int64, device=positions.device)
        if batch.mode is ForwardMode.DECODE:
            return positions + self.rope_deltas[batch.req_pool_indices]
        self.rope_deltas[batch.req_pool_indices] = 0 if batch.rope_deltas is None else batch.rope_deltas
        return positions if batch.mrope_positions is None else batch.mrope_positions

    def image_features(self, images: list[ImageInput]) -> list[torch.Tensor]:
        """Per image, its [length, hidden] embedding rows (one vision-tower call for all; its
        attention never crosses images)."""
        param = self.visual.patch_embed.proj.weight
        pixels = _device_pixels(images, param.device)
        merged = self.vision_encoder(pixels, [img.grid_thw for img in images])
        return list(torch.split(merged, [img.length for img in images]))

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """HF tensors (either checkpoint layout) into the vision tower and the language model
        (its own loader and completeness check); every parameter must be set."""
        params = dict(self.visual.named_parameters())
        language, loaded = [], set()
        for name, tensor in weights:
            name = _canonical(name)
            if name.startswith("visual."):
                key = name[len("visual.") :]
                if key not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
                copy_checked(params[key], whole(tensor), name)
                loaded.add(key)
            else:
                language.append((name, tensor))
        self.language_model.load_weights(iter(language))
        missing = [f"visual.{n}" for n in params if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing tensors for: {missing[:5]}{' ...' if len(missing) > 5 else ''}")


class Qwen2_5_VLForConditionalGeneration(Qwen2VLForConditionalGeneration):
    """Qwen2.5-VL: the same language model and positions; its vision transformer uses window
    attention, RMSNorm and a gated MLP (transformers' module)."""

    vision_class = ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VisionTransformerPretrainedModel")


def _device_pixels(images: list[ImageInput], device: torch.device) -> torch.Tensor:
    """The images' float32 [patches, C*T*P*P] pixels on `device`, image after image: decoded
    there from their uint8 codes where the front sent those (all images' codes in one copy),
    else copied as they are; no copy makes the host wait for the device."""
    if all(img.pixel_table is not None for img in images):
        return decode_torch_batch([img.pixel_values for img in images], [img.pixel_table for img in images], device)
    return torch.cat([_one_image_pixels(img, device) for img in images])


def _one_image_pixels(image: ImageInput, device: torch.device) -> torch.Tensor:
    if image.pixel_table is None:
        return pinned_to_device(torch.from_numpy(image.pixel_values), device)
    return decode_torch(image.pixel_values, image.pixel_table, device)


def _canonical(name: str) -> str:
    for theirs, ours in _PREFIXES:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name
