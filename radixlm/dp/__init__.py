"""Data parallelism: `dp_size` engine replicas behind one front, with a cache-aware router.

`router` is pure Python (no torch); `dp_client` starts the replicas and routes requests.
"""
