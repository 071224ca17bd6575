"""A vLLM-compatible simulator for local runs, tests, chaos and load tests.

``Simulator(SimConfig(...))`` serves vLLM's OpenAI endpoints on a real socket with a
deterministic word-level "model" (exact mid-stream resume at token and text level), vLLM's
stream and error shapes, vLLM's metric names, a max-concurrent-sequences scheduler, and fault
injection (``set_fault`` / ``POST /sim/fault``; grammar in :mod:`worker.sim.faults`).
"""
from worker.sim.config import SimConfig
from worker.sim.faults import FaultSpec
from worker.sim.metrics import SimStats
from worker.sim.server import Simulator
from worker.sim.tokenizer import Tokenizer

__all__ = ["FaultSpec", "SimConfig", "SimStats", "Simulator", "Tokenizer"]
