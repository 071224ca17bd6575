"""The simulator's tokenizer, model, scheduler and fault grammar, without sockets."""
from __future__ import annotations

import asyncio

import pytest

from worker.sim.engine import Generation, Model, PrefixCache, Scheduler, sampling_salt
from worker.sim.faults import ActiveFault, FaultController, FaultSpec
from worker.sim.tokenizer import IM_END_ID, IM_START_ID, Tokenizer, render_chat

TOK = Tokenizer()
MODEL = Model(TOK)


def generate(prompt_ids: list[int], n: int, salt: int = sampling_salt(0, 0.0, None, 0)) -> list[int]:
    gen = Generation(MODEL, TOK, prompt_ids, n, salt)
    return gen.step(n)[0]


def test_vocab_is_stable_and_special_tokens_are_single_ids() -> None:
    assert Tokenizer().pieces == TOK.pieces
    assert TOK.encode("<|im_start|>user\nhi<|im_end|>")[0] == IM_START_ID
    assert TOK.encode("<|im_end|>") == [IM_END_ID]


@pytest.mark.parametrize("text", ["Hello there world", "café ünïcode 🙂", "a\tb  c\n\nd", "x,y.z!"])
def test_decode_inverts_encode(text: str) -> None:
    assert TOK.decode(TOK.encode(text)) == text


def test_generated_ids_round_trip_through_text() -> None:
    prompt = TOK.encode("Once upon a time")
    ids = generate(prompt, 300)
    text = TOK.decode(ids)
    assert TOK.encode(text) == ids
    assert TOK.encode("Once upon a time" + text) == prompt + ids


def test_generation_is_a_function_of_the_context() -> None:
    prompt = TOK.encode("the quick brown fox")
    full = generate(prompt, 40)
    assert generate(prompt, 40) == full
    assert generate(prompt + full[:17], 23) == full[17:]
    assert generate(TOK.encode("another prompt"), 40) != full


def test_seeded_sampling_is_reproducible_and_differs_from_greedy() -> None:
    prompt = TOK.encode("the quick brown fox")
    seeded = sampling_salt(0, 0.8, 1234, draw=99)
    assert sampling_salt(0, 0.8, 1234, draw=7) == seeded  # the draw is ignored when seeded
    a = generate(prompt, 30, seeded)
    assert a == generate(prompt, 30, seeded)
    assert a != generate(prompt, 30)
    assert generate(prompt + a[:10], 20, seeded) == a[10:]


def test_stop_string_ends_generation_without_the_stop_text() -> None:
    prompt = TOK.encode("hello")
    text = TOK.decode(generate(prompt, 50))
    stop = text.split()[5]
    gen = Generation(MODEL, TOK, prompt, 50, sampling_salt(0, 0.0, None, 0), stop=[stop])
    ids, out = gen.step(50)
    assert gen.finish_reason == "stop" and gen.stop_reason == stop
    assert out == text[: text.index(stop)]


def test_chat_template_open_final_message() -> None:
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " so far"}]
    assert render_chat(msgs[:1], add_generation_prompt=True, continue_final_message=False) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert render_chat(msgs, add_generation_prompt=False, continue_final_message=True) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n so far")


async def test_scheduler_queues_beyond_max_and_hands_slots_over() -> None:
    sched = Scheduler(1)
    await sched.acquire()
    waiter = asyncio.create_task(sched.acquire())
    cancelled = asyncio.create_task(sched.acquire())
    await asyncio.sleep(0)
    assert (sched.running, sched.waiting) == (1, 2)
    cancelled.cancel()
    await asyncio.gather(cancelled, return_exceptions=True)
    assert sched.waiting == 1
    sched.release()
    await asyncio.wait_for(waiter, 1)
    assert (sched.running, sched.waiting) == (1, 0)
    sched.release()
    assert sched.running == 0


def test_prefix_cache_counts_shared_full_blocks() -> None:
    cache = PrefixCache(block_size=4, capacity_blocks=100)
    assert cache.query(list(range(10))) == 0
    assert cache.query(list(range(9)) + [99]) == 8
    assert cache.query([7] + list(range(9))) == 0


@pytest.mark.parametrize("text,kind,params", [
    ("429", "429", {}),
    ("429:retry_after=2", "429", {"retry_after": 2.0}),
    ("429:2", "429", {"retry_after": 2.0}),
    ("500_once", "500_once", {"times": 1.0}),
    ("cut_after:tokens=5", "cut_after", {"tokens": 5.0}),
    ("slow_first_token:seconds=0.5,prob=0.3", "slow_first_token", {"seconds": 0.5, "prob": 0.3}),
    ("flap:down_s=2,up_s=1", "flap", {"down_s": 2.0, "up_s": 1.0}),
])
def test_fault_spec_grammar(text: str, kind: str, params: dict[str, float]) -> None:
    spec = FaultSpec.parse(text)
    assert (spec.kind, dict(spec.params)) == (kind, params)


@pytest.mark.parametrize("text,needle", [
    ("nope", "unknown fault kind"), ("cut_after", "needs tokens"), ("hang:3", "no positional"),
    ("429:colour=red", "no parameter"), ("503:prob=1.5", "prob"), ("stall_after:tokens=x", "not a number"),
])
def test_bad_fault_specs_say_why(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        FaultSpec.parse(text)


def test_probabilistic_fault_is_deterministic_given_the_seed() -> None:
    def outcomes(seed: int) -> list[bool]:
        ctl = FaultController(lambda: 0.0, seed)
        ctl.set("503:prob=0.3")
        return [ctl.before_parse() is not None for _ in range(200)]

    assert outcomes(7) == outcomes(7)
    assert outcomes(7) != outcomes(8)
    assert 30 < sum(outcomes(7)) < 90


def test_flap_follows_the_injected_clock() -> None:
    now = [100.0]
    ctl = FaultController(lambda: now[0], seed=0)
    ctl.set("flap:down_s=2,up_s=3")
    seen = []
    for t in (100.0, 101.9, 102.0, 104.9, 105.0):
        now[0] = t
        seen.append(ctl.before_parse() is not None)
    assert seen == [True, True, False, False, True]


def test_health_sees_only_non_per_request_faults() -> None:
    assert ActiveFault(FaultSpec.parse("503"), 0.0, None).hits_health(0.0)  # type: ignore[arg-type]
    assert not ActiveFault(FaultSpec.parse("503:times=2"), 0.0, None).hits_health(0.0)  # type: ignore[arg-type]
    assert ActiveFault(FaultSpec.parse("503:times=2,health=1"), 0.0, None).hits_health(0.0)  # type: ignore[arg-type]
    assert not ActiveFault(FaultSpec.parse("429"), 0.0, None).hits_health(0.0)  # type: ignore[arg-type]
