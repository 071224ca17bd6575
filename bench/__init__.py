"""Reproducible benchmarks: infercdn against direct upstream access and peer gateways (`make bench`)."""
