"""One test per fault, through the real gateway against simulators (scenarios in
:mod:`tests.chaos.scenarios`): what the client sees, what the simulators counted, and that the
gateway is healthy afterwards."""
from __future__ import annotations


from tests.chaos import scenarios as sc
from tests.chaos import scenarios_fallback as fb
from tests.chaos.helpers import Env


async def test_429_without_retry_after_goes_to_the_next_region(env: Env) -> None:
    await sc.throttled(env)


async def test_429_retry_after_is_honoured(env: Env) -> None:
    await sc.throttled_retry_after(env)


async def test_429_everywhere_is_a_429_with_retry_after(env: Env) -> None:
    await sc.throttled_everywhere(env)


async def test_500_once_then_healthy(env: Env) -> None:
    await sc.error_once(env)


async def test_503_always_fails_over_and_ejects(env: Env) -> None:
    await sc.unavailable(env)


async def test_503_everywhere_is_a_clean_503(env: Env) -> None:
    await sc.unavailable_everywhere(env)


async def test_reset_before_headers_fails_over(env: Env) -> None:
    await sc.reset(env)


async def test_hang_hits_the_ttft_deadline_and_fails_over(env: Env) -> None:
    await sc.hang(env)


async def test_hang_without_stream_fails_over_at_the_ttft_deadline(env: Env) -> None:
    await sc.hang_non_stream(env)


async def test_non_stream_answer_cut_mid_generation_is_resumed(env: Env) -> None:
    await sc.cut_non_stream(env)


async def test_hang_without_stream_passthrough_is_bounded_by_the_total_deadline(env: Env) -> None:
    await sc.hang_non_stream_passthrough(env)


async def test_hang_without_stream_passthrough_names_the_timed_out_attempt(env: Env) -> None:
    reply = (await sc.hang_non_stream_passthrough(env)).reply
    assert reply is not None
    assert "1 attempt(s)" in reply.doc["error"]["message"] and reply.attempts == 1


async def test_slow_first_token_past_the_deadline_fails_over(env: Env) -> None:
    await sc.slow_first_token(env)


async def test_slow_first_token_within_the_deadline_gets_keepalives(env: Env) -> None:
    await sc.slow_first_token_keepalive(env)


async def test_keepalive_head_counts_the_attempt_in_flight(env: Env) -> None:
    reply = (await sc.slow_first_token_keepalive(env)).reply
    assert reply is not None and reply.attempts == 1


async def test_cut_stream_is_resumed_exactly(env: Env) -> None:
    await sc.cut(env)


async def test_stalled_stream_is_resumed_exactly(env: Env) -> None:
    await sc.stall(env)


async def test_malformed_event_is_dropped(env: Env) -> None:
    await sc.malformed(env)


async def test_stream_without_done_is_completed(env: Env) -> None:
    await sc.no_done(env)


async def test_context_length_is_returned_unchanged(env: Env) -> None:
    await sc.context_length(env)


async def test_context_length_goes_to_the_larger_context_pool(env: Env) -> None:
    await sc.context_length_larger(env)


async def test_content_policy_is_returned_not_retried(env: Env) -> None:
    await sc.content_policy(env)


async def test_content_policy_goes_to_the_fallback_model_only_when_opted_in(env: Env) -> None:
    await fb.content_policy_fallback(env)


async def test_content_policy_is_never_tried_on_the_fallback_model_by_default(env: Env) -> None:
    await fb.content_policy_not_to_fallback(env)


async def test_flapping_endpoint_is_avoided_then_used_again(env: Env) -> None:
    await sc.flapping(env)


async def test_flapping_endpoint_without_probe_signal_is_used_again(env: Env) -> None:
    await sc.flapping_passive(env)


async def test_hedge_wins_and_the_loser_is_cancelled(env: Env) -> None:
    await sc.hedging(env)


async def test_hedged_request_reports_both_attempts(env: Env) -> None:
    reply = (await sc.hedging(env)).reply
    assert reply is not None and reply.attempts == 2


async def test_a_short_retry_after_on_the_only_endpoint_is_waited_out(env: Env) -> None:
    await fb.throttled_only_endpoint(env)


async def test_a_500_once_on_the_only_endpoint_is_retried_there(env: Env) -> None:
    await fb.error_once_only_endpoint(env)


async def test_a_500_always_on_the_only_endpoint_is_retried_once_then_falls_back(env: Env) -> None:
    await fb.error_always_only_endpoint(env)


async def test_a_stall_is_seen_within_the_learnt_stall_timeout(env: Env) -> None:
    await fb.stall_adaptive(env)


async def test_resumes_are_capped_by_max_resumes(env: Env) -> None:
    await fb.resumes_capped(env)
