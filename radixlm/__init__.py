"""radixlm: a fast LLM serving engine with a radix-tree prefix cache, and a language for LLM programs."""

from radixlm.engine import Engine
from radixlm.sampling.sampling_params import SamplingParams
from radixlm.server_args import ServerArgs

__all__ = ["Engine", "SamplingParams", "ServerArgs"]
__version__ = "0.1.0"
