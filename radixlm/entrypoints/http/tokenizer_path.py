"""The `tokenizer_path` the info routes report: one a client can hand to
`AutoTokenizer.from_pretrained` on this machine (SGLang's `bench_serving` does, when run
without `--tokenizer`)."""

from __future__ import annotations

import os
from typing import Optional

from radixlm.config.server_args import ServerArgs
from radixlm.tokenizer.loader import gguf_tokenizer_cache_path


def loadable_tokenizer_path(args: ServerArgs) -> Optional[str]:
    """`--tokenizer-path`, else the model directory; for a GGUF file, the directory its tokenizer was
    exported to when the server loaded it (None when that export could not be cached). Paths are
    the resolved local ones (a Hub id was resolved to its snapshot at start-up)."""
    path = args.tokenizer_path or args.model_path
    if path is None or not (os.path.isfile(path) and path.endswith(".gguf")):
        return path
    exported = gguf_tokenizer_cache_path(path)
    return str(exported) if (exported / "tokenizer_config.json").is_file() else None
