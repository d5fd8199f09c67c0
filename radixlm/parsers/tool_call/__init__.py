"""Tool-call parsers, one module per output format, chosen by name in `registry`."""
