"""Long reliability runs (load, memory pressure, faults) against a live loopback server.

Not collected by pytest (see `collect_ignore` in tests/conftest.py); the short CI versions in
tests/reliability/ import these drivers with small counts. Run one directly, e.g.
`python -m stress.load --requests 1000` from the tests/ directory.
"""
