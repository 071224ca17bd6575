"""A vLLM-compatible simulator for local runs, tests, chaos and load tests.

``Simulator(SimConfig(...))`` serves vLLM 0.32's OpenAI endpoints (completions and chat with
``n``, lists of prompts, echo and logprobs; ``/v1/responses``; ``/tokenize``; ``/detokenize``) on
a real socket with a deterministic word-level "model" (exact mid-stream resume at token and text
level), vLLM's stream and error shapes, vLLM's metric names, a max-concurrent-sequences
scheduler, and fault injection (``set_fault`` / ``POST /sim/fault``; grammar in
:mod:`worker.sim.faults`).  docs/simulator.md says what it serves and how it is checked against
real vLLM.
"""
from worker.sim.config import SimConfig
from worker.sim.faults import FaultSpec
from worker.sim.metrics import SimStats
from worker.sim.server import Simulator
from worker.sim.tokenizer import Tokenizer

__all__ = ["FaultSpec", "SimConfig", "SimStats", "Simulator", "Tokenizer"]
