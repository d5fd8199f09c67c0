"""Shared test set-up: tests import helpers from tests/ (tiny_models) directly."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

collect_ignore = ["stress"]  # long reliability drivers, run by hand (tests/stress/__init__.py)
