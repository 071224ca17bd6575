"""Issue 9, item 1: a cut stream continued on the fallback model (scenarios in
:mod:`tests.chaos.scenarios_crossmodel`)."""
from __future__ import annotations

from tests.chaos import scenarios_crossmodel as cm
from tests.chaos.helpers import Env


async def test_cut_continues_on_the_fallback_model_by_prefill(env: Env) -> None:
    await cm.cut_to_fallback_prefill(env)


async def test_cut_continues_on_a_fallback_pool_flagged_without_prefill(env: Env) -> None:
    await cm.cut_to_fallback_no_prefill_flag(env)


async def test_cut_continues_on_a_fallback_that_rejects_the_prefill(env: Env) -> None:
    await cm.cut_to_fallback_rejects_prefill(env)


async def test_sampled_cut_on_a_fallback_that_rejects_the_prefill_names_the_cut(env: Env) -> None:
    await cm.cut_sampled_fallback_rejects(env)


async def test_stall_continues_once_on_the_fallback_model(env: Env) -> None:
    await cm.stall_to_fallback(env)


async def test_completions_cut_continues_on_the_fallback_model(env: Env) -> None:
    await cm.completions_to_fallback(env)


async def test_non_stream_cut_continues_on_the_fallback_model(env: Env) -> None:
    await cm.assembled_to_fallback(env)
