"""The pure routing core of infercdn.

Synchronous and free of network I/O: time and randomness are injected
(``clock: Callable[[], float]`` returning monotonic seconds, ``rng: random.Random``).
Never imports ``gateway`` or aiohttp.
"""
