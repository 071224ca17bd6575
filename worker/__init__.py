"""What runs beside the GPUs: the vLLM launcher/supervisor and the vLLM-compatible simulator.
Never imports ``gateway``."""
