"""Structured output: regex / JSON-schema / EBNF constraints, two grammar backends behind one
contract (`base.py`), compiled off the scheduler loop (`manager.py`), applied as one batched vocab
mask per step (`structured.py`), with jump-forward over forced text (`jump_forward.py`)."""
