"""Tensor parallelism: process groups, collectives, rank placement and batch mirroring."""
