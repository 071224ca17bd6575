"""infercdn loadtest: a geo-aware load generator for OpenAI-compatible APIs."""
