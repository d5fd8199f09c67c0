"""Quantization methods behind the linear layers (see `base.LinearMethod`)."""
