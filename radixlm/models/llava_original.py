"""The original LLaVA checkpoint layout (`LlavaLlamaForCausalLM`): LLaVA-1.5's model with
the checkpoint's names (`model.*`, `model.mm_projector.{0,2}.*`, `lm_head.*`) and the vision
tower's weights from the CLIP directory its config names (`radixlm.multimodal.llava_original`)."""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from radixlm.models.llava import LlavaForConditionalGeneration, tower_param_name
from radixlm.multimodal.llava_original import vision_tower_weights

# original name prefix -> the LLaVA model's (the first match wins)
_RENAMES = (
    ("model.mm_projector.0.", "multi_modal_projector.linear_1."),
    ("model.mm_projector.2.", "multi_modal_projector.linear_2."),
    ("model.vision_tower.vision_tower.", "vision_tower."),
    ("model.", "language_model.model."),
    ("lm_head.", "language_model.lm_head."),
)


class LlavaLlamaForCausalLM(LlavaForConditionalGeneration):
    """`LlavaForConditionalGeneration` reading the original checkpoint's tensor names; the
    config comes from `radixlm.multimodal.llava_original.read_original_llava`."""

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """The checkpoint's tensors, then the CLIP directory's vision model for every tower
        parameter the checkpoint did not hold; every parameter must be set."""
        super().load_weights(self._all_weights(weights))

    def _all_weights(self, weights: Iterable[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
        params = dict(self.named_parameters())
        seen: set[str] = set()
        for name, tensor in weights:
            name = tower_param_name(_renamed(name), params)
            seen.add(name)
            yield name, tensor
        for name, tensor in vision_tower_weights(self.config.mm_vision_tower_dir):
            ours = tower_param_name(f"vision_tower.{name}", params)
            if ours.startswith("vision_tower.") and ours in params and ours not in seen:
                yield ours, tensor


def _renamed(name: str) -> str:
    for theirs, ours in _RENAMES:
        if name.startswith(theirs):
            return ours + name[len(theirs) :]
    return name
