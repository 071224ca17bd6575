"""The infercdn edge gateway: aiohttp + uvloop, OpenAI-compatible endpoints."""
