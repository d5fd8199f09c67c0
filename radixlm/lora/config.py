"""LoRA adapter settings: `--lora-paths` entries and PEFT's `adapter_config.json`, validated.

Pure Python (no torch): the front reads the adapter names from here, the scheduler the configs.
Every refusal is a ValueError naming the adapter and the problem.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Optional

# The projections an adapter may target, by their Hugging Face (PEFT) module names.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# adapter_config.json keys whose non-default values change the computation: refused, not ignored.
_UNSUPPORTED = {
    "use_dora": (False, None),
    "rank_pattern": ({}, None),
    "alpha_pattern": ({}, None),
    "layers_to_transform": (None,),
    "layers_pattern": (None, [], ""),
    "modules_to_save": (None, []),
    "fan_in_fan_out": (False, None),
    "bias": ("none", None),
    "exclude_modules": (None, [], ""),
    "lora_bias": (False, None),
    "trainable_token_indices": (None, {}, []),
    "alora_invocation_tokens": (None,),
    "layer_replication": (None, []),
    "target_parameters": (None, []),
    "use_qalora": (False, None),
    "use_bdlora": (None, False),
}


@dataclass(frozen=True)
class AdapterConfig:
    """One adapter's rank, scaling and targets. Invariant: `rank >= 1` and every target is in
    TARGET_MODULES. `scaling` is what PEFT multiplies the LoRA term by: alpha / r, or with
    rsLoRA alpha / sqrt(r)."""

    rank: int
    alpha: float
    targets: frozenset[str]
    use_rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)


def parse_lora_paths(entries: Optional[Iterable[str]]) -> dict[str, str]:
    """`--lora-paths` entries (`name=path`, or a bare path named by itself) as {name: path}, in
    order; ValueError on an empty name or path, or a name given twice."""
    out: dict[str, str] = {}
    for entry in entries or ():
        if not isinstance(entry, str) or not entry:
            raise ValueError(f"lora_paths entries must be 'name=path' or a path, got {entry!r}")
        name, sep, path = entry.partition("=")
        if not sep:
            name = path = entry
        if not name or not path:
            raise ValueError(f"lora_paths entry {entry!r} has an empty name or path")
        if name in out:
            raise ValueError(f"LoRA adapter name {name!r} is given twice in lora_paths")
        out[name] = path
    return out


def read_adapter_config(name: str, path: str, max_rank: Optional[int] = None) -> AdapterConfig:
    """The adapter at directory `path`, refusing what we do not compute (see `_UNSUPPORTED`),
    targets other than TARGET_MODULES and a rank above `max_rank` (when given)."""
    file = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(file):
        raise ValueError(f"LoRA adapter {name!r}: no {CONFIG_FILE} in {path!r}")
    try:
        with open(file, encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"LoRA adapter {name!r}: {file} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise ValueError(f"LoRA adapter {name!r}: {file} must hold a JSON object")
    return config_from_dict(name, raw, max_rank)


def config_from_dict(name: str, raw: dict[str, Any], max_rank: Optional[int] = None) -> AdapterConfig:
    """`read_adapter_config` on an already parsed adapter_config.json."""
    peft_type = raw.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise ValueError(f"LoRA adapter {name!r}: peft_type {peft_type!r} is not LORA")
    rank, alpha = raw.get("r"), raw.get("lora_alpha", raw.get("r"))
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"LoRA adapter {name!r}: r must be a positive integer, got {rank!r}")
    if max_rank is not None and rank > max_rank:
        raise ValueError(f"LoRA adapter {name!r}: rank {rank} exceeds max_lora_rank {max_rank}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"LoRA adapter {name!r}: lora_alpha must be a number, got {alpha!r}")
    for key, allowed in _UNSUPPORTED.items():
        if key in raw and raw[key] not in allowed:
            raise ValueError(f"LoRA adapter {name!r}: {key}={raw[key]!r} is not supported")
    rslora = raw.get("use_rslora", False)
    if not isinstance(rslora, bool):
        raise ValueError(f"LoRA adapter {name!r}: use_rslora must be true or false, got {rslora!r}")
    return AdapterConfig(rank, float(alpha), _targets(name, raw.get("target_modules")), rslora)


def _targets(name: str, given: Any) -> frozenset[str]:
    if given == "all-linear":
        return frozenset(TARGET_MODULES)
    if isinstance(given, str) or not isinstance(given, list) or not given:
        raise ValueError(
            f"LoRA adapter {name!r}: target_modules must be a non-empty list of module names "
            f"(a regular expression is not supported), got {given!r}"
        )
    names = {t.rsplit(".", 1)[-1] if isinstance(t, str) else t for t in given}
    unknown = sorted(map(repr, names - set(TARGET_MODULES)))
    if unknown:
        raise ValueError(
            f"LoRA adapter {name!r}: target module(s) {', '.join(unknown)} not in the model "
            f"(supported: {', '.join(TARGET_MODULES)})"
        )
    return frozenset(names)
