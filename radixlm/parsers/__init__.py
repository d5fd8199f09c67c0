"""Parsers of model output text: tool calls (one module per format under `tool_call/`) and
reasoning sections (`reasoning.py`). Pure functions over text and stream deltas; no torch,
no server state, so the front and tests use them alone."""
