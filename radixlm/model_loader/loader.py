"""Build a native model from a HF directory, a GGUF file, or random ("dummy") weights."""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Iterator, Optional

import torch
from torch import nn
from tqdm import tqdm

from radixlm.attention.base import AttentionBackend
from radixlm.distributed.group import TPGroup
from radixlm.layers.linear import AttentionHeads
from radixlm.models.registry import resolve_model_class, resolve_model_impl, supported_architectures
from radixlm.multimodal.config import check_model_impl, prepare_multimodal_config
from radixlm.multimodal.llava_original import read_original_llava

logger = logging.getLogger(__name__)

_DTYPE_NAMES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
}


def is_gguf(path: str) -> bool:
    return os.path.isfile(path) and path.endswith(".gguf")


def load_model_config(model_path: str, trust_remote_code: bool = False) -> Any:
    """The transformers config of a HF directory or a GGUF file; clear errors for anything else."""
    from transformers import AutoConfig

    if not os.path.exists(model_path):
        raise FileNotFoundError(
            f"model path {model_path!r} does not exist; expected a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files) or a .gguf file"
        )
    if is_gguf(model_path):
        from radixlm.model_loader.gguf_reader import read_gguf_config

        cfg = dict(read_gguf_config(model_path))
        return AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise FileNotFoundError(
            f"model path {model_path!r} has no config.json; expected a Hugging Face model directory or a .gguf file"
        )
    config = read_original_llava(model_path)  # its config.json is not one transformers reads right
    if config is None:
        config = _with_architectures(AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code))
    return prepare_multimodal_config(config)


def _with_architectures(config: Any) -> Any:
    """Configs saved without `architectures` get the causal-LM class of their model_type."""
    if not getattr(config, "architectures", None):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", ""))
        if name:
            config.architectures = [name]
    return config


def kv_heads_of(config: Any) -> int:
    """KV heads per layer; configs of multi-head models (GPT-NeoX, GPT-2) may not name them."""
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


def resolve_dtype(name: str, config: Any, device: torch.device, quantization: Optional[str] = None) -> torch.dtype:
    """`auto`: on CPU float32 with GGUF blocks kept (`quantization` "gguf": the C kernels compute
    in float32 and the fused decode step needs float32 weights), else bfloat16 where the cores have
    native bf16 dot products, else float32 (`cpu_dtype.cpu_auto_dtype`); the checkpoint's dtype
    elsewhere."""
    if name != "auto":
        return _DTYPE_NAMES[name]
    if device.type == "cpu" and quantization == "gguf":
        logger.info("dtype auto on CPU with GGUF blocks kept: float32 (the block kernels' precision)")
        return torch.float32
    if device.type == "cpu":
        from radixlm.model_loader.cpu_dtype import cpu_auto_dtype

        return cpu_auto_dtype()
    cfg_dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(cfg_dtype, str):
        cfg_dtype = _DTYPE_NAMES.get(cfg_dtype)
    return cfg_dtype if cfg_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16


def residual_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype of a native model's residual stream, final norm and LM head: float32 on the CPU
    under 16-bit weights (bf16 rounding of the running sum and of the logits flips near-tied
    argmaxes; the bytes it adds are the embedding and head's), else `dtype` itself (CUDA keeps
    the residual in the model dtype, as its fused norm kernels expect)."""
    if device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return dtype


def build_model(
    config: Any,
    backend: AttentionBackend,
    model_path: str,
    load_format: str,
    dtype: torch.dtype,
    device: torch.device,
    seed: int = 0,
    model_impl: str = "auto",
    trust_remote_code: bool = False,
    context_len: Optional[int] = None,
    tp: Optional[TPGroup] = None,
    ep_size: int = 1,
    quantization: Optional[str] = None,
    gguf_activations: str = "float32",
    residual: Optional[torch.dtype] = None,
) -> nn.Module:
    """Construct on the meta device, materialize on `device`, then fill the weights.

    `model_impl` picks radixlm's native class or the Transformers backend (registry.resolve_model_impl);
    the latter refuses models it cannot run exactly for sequences of up to `context_len` tokens,
    and tensor parallelism. With `tp`, only this rank's shard is built and read from the checkpoint;
    `ep_size` (1 or tp's size, MoE models only) splits experts across the ranks instead of their
    intermediate dimension.

    `quantization` (`--quantization`) or the checkpoint's `quantization_config` puts a quantization
    method behind the linear layers (`radixlm.layers.quantization`); the chosen plan is kept as
    `model.quant_plan` (None when unquantized). `gguf_activations`: `--gguf-cpu-activations`.
    `residual` (default `dtype`): the residual stream's dtype, applied by native models that have
    `use_residual_dtype` (the Llama family; others keep theirs in `dtype`)."""
    tp = tp or TPGroup.single()
    check_model_impl(config, model_impl)
    check_tensor_parallel(config, model_impl, tp.size, ep_size)
    architectures = getattr(config, "architectures", None) or []
    native = resolve_model_impl(architectures, model_impl) != "transformers"
    plan = quant_plan(config, quantization, model_path, load_format, device, gguf_activations)
    if plan is not None and not native:
        raise ValueError(
            f"quantization {plan.name!r} needs a native model ({', '.join(supported_architectures())}); "
            f"the Transformers backend runs unquantized weights only"
        )
    if native:
        extra = {"ep_size": ep_size} if ep_size > 1 else {}
        cls = resolve_model_class(architectures)
        model = _build_native(cls, config, backend, (dtype, residual or dtype), device, tp, extra, plan)
    else:
        from radixlm.models.transformers_backend import TransformersForCausalLM

        model = TransformersForCausalLM.create(config, backend, dtype, device, trust_remote_code, context_len)
    if load_format == "dummy":
        _init_dummy(model, seed)
    else:
        model.load_weights(iter_weights(model_path, load_format, lazy=native, keep_quantized=plan))
    if plan is not None:
        from radixlm.layers.quantization.layer import finish_loading

        finish_loading(model, device)
        if plan.finish is not None and load_format != "dummy":
            plan.finish(model, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # online fp8 freed the float weights: measured memory must not count them
    model.quant_plan = plan
    return model.eval()


def quant_plan(
    config: Any,
    quantization: Optional[str],
    model_path: str,
    load_format: str,
    device: torch.device,
    gguf_activations: str = "float32",
) -> Any:
    """The `QuantPlan` for this model (None: unquantized); raises naming the field at fault."""
    gguf = is_gguf(model_path) or load_format == "gguf"
    if quantization is None and getattr(config, "quantization_config", None) is None:
        return None
    from radixlm.layers.quantization.config import resolve_quantization

    if quantization == "gguf" and load_format == "dummy":
        from radixlm.layers.quantization.gguf import dummy_plan

        return dummy_plan(device)
    if quantization == "gguf" and gguf:
        from radixlm.layers.quantization.gguf import gguf_plan

        return gguf_plan(model_path, device, gguf_activations)
    return resolve_quantization(config, quantization, gguf, device)


def check_tensor_parallel(config: Any, model_impl: str, tp_size: int, ep_size: int = 1) -> None:
    """ValueError naming what to change when the model cannot be split `tp_size` ways, its
    experts `ep_size` ways (cheap: the front calls it before starting any process)."""
    if tp_size == 1:
        return
    architectures = getattr(config, "architectures", None) or []
    if model_impl == "transformers" or not set(architectures) & set(supported_architectures()):
        raise ValueError(
            f"tp_size={tp_size}: the Transformers backend (model_impl='transformers', or 'auto' for "
            f"{architectures}) runs with tp_size=1 only; tensor parallelism needs a native model "
            f"({', '.join(supported_architectures())})"
        )
    AttentionHeads.split(config.num_attention_heads, kv_heads_of(config), TPGroup(0, tp_size))
    resolve_model_class(architectures).check_mlp_split(config, tp_size, ep_size)


def _build_native(
    cls: type,
    config: Any,
    backend: AttentionBackend,
    dtypes: tuple[torch.dtype, torch.dtype],
    device: torch.device,
    tp: TPGroup,
    extra: dict[str, Any],
    plan: Any = None,
) -> nn.Module:
    """`dtypes`: (the weights', the residual stream's)."""
    dtype, residual = dtypes
    with torch.device("meta"):
        model = cls(config, backend, tp, **extra)
    model = model.to(dtype=dtype)
    if residual != dtype and hasattr(model, "use_residual_dtype"):
        model.use_residual_dtype(residual)
    if plan is not None:  # after the dtype cast, which would turn fp8 weights and float32 scales into `dtype`
        from radixlm.layers.quantization.layer import quantize_linears

        count = quantize_linears(model, plan.methods(model), dtype)
        logger.info("quantization %s: %d linear layers", plan.name, count)
    model = model.to_empty(device=device)
    for module in model.modules():
        if hasattr(module, "init_cache"):
            module.init_cache(device)
    return model


class LazySlice:
    """A safetensors tensor not read yet: `shape`, `narrow` (reads only that range) and `full`."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.shape = tuple(handle.get_shape())

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        return self._handle[(slice(None),) * dim + (slice(start, start + length),)]

    def full(self) -> torch.Tensor:
        return self._handle[...]  # [:] cannot read a 0-dim tensor (an fp8 per-tensor scale)


def iter_weights(
    model_path: str, load_format: str, lazy: bool = False, keep_quantized: Any = None
) -> Iterator[tuple[str, Any]]:
    """(HF name, tensor) for every tensor of the checkpoint (safetensors, else pytorch_model*.bin);
    with `lazy`, safetensors tensors come as `LazySlice`s so a tensor-parallel rank reads only its
    shard (GGUF and .bin tensors are always full). A GGUF `keep_quantized` plan (a `QuantPlan`) gets
    its `raw_names` tensors as quantized blocks."""
    if is_gguf(model_path) or load_format == "gguf":
        from radixlm.model_loader.gguf_reader import GGUFCheckpoint

        checkpoint = GGUFCheckpoint(model_path)
        raw = getattr(keep_quantized, "raw_names", frozenset())
        tensors = checkpoint.tensors(raw) if raw else checkpoint.tensors()
        yield from tqdm(tensors, total=len(checkpoint), desc="Loading weights", leave=False)
        return
    files = sorted(glob.glob(os.path.join(model_path, "*.safetensors")))
    if not files or load_format == "pt":
        yield from _iter_bin_weights(model_path)
        return
    from safetensors import safe_open

    for file in files:
        with safe_open(file, framework="pt") as f:
            for name in tqdm(list(f.keys()), desc=f"Loading {os.path.basename(file)}", leave=False):
                yield name, LazySlice(f.get_slice(name)) if lazy else f.get_tensor(name)


def _iter_bin_weights(model_path: str) -> Iterator[tuple[str, torch.Tensor]]:
    """PyTorch `pytorch_model*.bin` checkpoints, unpickled with `weights_only=True` (tensors and plain
    containers only: a checkpoint cannot run code) and memory-mapped, one shard at a time."""
    files = sorted(glob.glob(os.path.join(model_path, "pytorch_model*.bin")))
    if not files:
        raise FileNotFoundError(
            f"no *.safetensors or pytorch_model*.bin files in {model_path!r} "
            "(use load_format='dummy' for random weights)"
        )
    for file in files:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        for name in tqdm(list(state), desc=f"Loading {os.path.basename(file)}", leave=False):
            yield name, state.pop(name)


def _init_dummy(model: nn.Module, seed: int) -> None:
    """Random weights of the config's shape; norms at 1 so activations stay in range."""
    gen = None
    quantized = [m for m in model.modules() if hasattr(m, "fill_dummy")]
    own = {id(p) for m in quantized for p in m.parameters()}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if gen is None:  # generated on the parameters' device: fast for large shapes on GPU
                gen = torch.Generator(device=param.device).manual_seed(seed)
            if id(param) in own:
                continue
            if "norm" in name:
                param.fill_(1.0)
            else:
                param.uniform_(-0.02, 0.02, generator=gen)
        for module in quantized:  # quantization methods fill their own (integer, fp8) weights
            module.fill_dummy(gen)
