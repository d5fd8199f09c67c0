"""Sampling: per-request parameters and batched, vectorized token sampling."""

from radixlm.sampling.sampler import apply_penalties_and_bias, filter_probs, sample
from radixlm.sampling.sampling_batch import SamplingBatch
from radixlm.sampling.sampling_params import GREEDY_TEMPERATURE_EPS, SamplingParams
from radixlm.sampling.seeding import derive_step_seed

__all__ = [
    "GREEDY_TEMPERATURE_EPS",
    "SamplingBatch",
    "SamplingParams",
    "apply_penalties_and_bias",
    "derive_step_seed",
    "filter_probs",
    "sample",
]
