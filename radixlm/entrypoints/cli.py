"""The `radixlm` command: `radixlm serve [flags]` (same flags as `python -m radixlm.launch_server`)."""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: radixlm serve [--model-path PATH] [--port 30000] ...  (radixlm serve --help for all flags)")
        return
    if argv[0] != "serve":
        sys.exit(f"radixlm: unknown command {argv[0]!r}; try `radixlm serve --help`")
    from radixlm.entrypoints.launch import main as serve_main

    serve_main(argv[1:])


if __name__ == "__main__":
    main()
