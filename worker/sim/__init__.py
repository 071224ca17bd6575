"""A vLLM-compatible simulator for local runs, tests, chaos and load tests."""
