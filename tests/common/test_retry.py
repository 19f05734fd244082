"""``Backoff``: the one retry policy (delays, jitter, caps, give-up), with a seeded RNG and a
fake sleep so every test is exact and instant."""

from __future__ import annotations

import random

import pytest

from mx8_common.retry import EQUAL_JITTER, NO_JITTER, Backoff


class _Flaky:
    """Fails with ``errors`` in turn, then returns ``"ok"``; counts the calls."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


class _Sleeps:
    def __init__(self) -> None:
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)


class _NoDraws(random.Random):
    def uniform(self, a: float, b: float) -> float:
        raise AssertionError("a fixed schedule must not draw")


def test_backoff_full_jitter_draws_uniformly_below_the_capped_exponential_step() -> None:
    policy = Backoff(base_s=0.05, max_s=1.0)
    got = [policy.delay(n, random.Random(7)) for n in range(1, 9)]
    want = [random.Random(7).uniform(0, min(1.0, 0.05 * 2 ** (n - 1))) for n in range(1, 9)]
    assert got == want
    assert [policy.step(n) for n in (1, 2, 5, 6, 9)] == [0.05, 0.1, 0.8, 1.0, 1.0]


def test_backoff_equal_jitter_keeps_at_least_half_of_each_step() -> None:
    policy = Backoff(base_s=0.05, max_s=2.0, jitter=EQUAL_JITTER)
    rng = random.Random(3)
    for n in range(1, 12):
        step = policy.step(n)
        assert step / 2 <= policy.delay(n, rng) <= step


def test_backoff_without_jitter_is_a_fixed_schedule_and_never_draws() -> None:
    policy = Backoff(base_s=0.05, factor=1.0, jitter=NO_JITTER, attempts=5)
    assert list(policy.delays(_NoDraws())) == [0.05] * 4


def test_backoff_step_saturates_at_the_cap_after_hours_of_polling() -> None:
    policy = Backoff(base_s=0.05, max_s=1.0, factor=1.25, jitter=(0.5, 1.5))
    assert policy.step(100_000) == 1.0
    assert 0.5 <= policy.delay(100_000, random.Random(1)) <= 1.5


def test_backoff_delays_are_one_fewer_than_attempts_or_endless() -> None:
    assert len(list(Backoff(base_s=0.1, attempts=4).delays(random.Random(0)))) == 3
    assert list(Backoff(base_s=0.1, attempts=1).delays()) == []
    endless = Backoff(base_s=0.1, max_s=0.2).delays(random.Random(0))
    assert len([next(endless) for _ in range(1000)]) == 1000


async def test_backoff_run_retries_then_returns_and_reports_each_retry() -> None:
    policy = Backoff(base_s=0.2, max_s=5.0, attempts=5)
    call, sleep, seen = _Flaky(OSError("a"), OSError("b")), _Sleeps(), []
    got = await policy.run(
        call,
        retry_if=lambda exc: isinstance(exc, OSError),
        on_retry=seen.append,
        rng=random.Random(11),
        sleep=sleep,
    )
    assert got == "ok" and call.calls == 3
    expected = random.Random(11)
    delays = [expected.uniform(0, 0.2), expected.uniform(0, 0.4)]
    assert sleep.slept == delays
    assert [(r.attempt, r.delay_s, str(r.error)) for r in seen] == [
        (1, delays[0], "a"),
        (2, delays[1], "b"),
    ]


async def test_backoff_run_raises_an_error_it_must_not_retry_at_once() -> None:
    error = ValueError("permanent")
    call, sleep = _Flaky(error), _Sleeps()
    with pytest.raises(ValueError) as caught:
        await Backoff(base_s=0.1, attempts=5).run(
            call, retry_if=lambda exc: isinstance(exc, OSError), sleep=sleep
        )
    assert caught.value is error and call.calls == 1 and sleep.slept == []


async def test_backoff_run_gives_up_after_its_attempts_with_the_last_error() -> None:
    errors = [OSError(f"try {i}") for i in range(1, 6)]
    call, sleep = _Flaky(*errors), _Sleeps()
    with pytest.raises(OSError) as caught:
        await Backoff(base_s=0.1, attempts=3).run(
            call, retry_if=lambda exc: True, rng=random.Random(0), sleep=sleep
        )
    assert caught.value is errors[2] and call.calls == 3 and len(sleep.slept) == 2


async def test_backoff_run_gives_up_when_the_next_step_would_pass_the_deadline() -> None:
    now = [0.0]
    sleep = _Sleeps()

    async def advance(seconds: float) -> None:
        await sleep(seconds)
        now[0] += seconds

    call = _Flaky(*[ConnectionError("down")] * 50)
    policy = Backoff(base_s=0.05, max_s=2.0, jitter=NO_JITTER)
    with pytest.raises(ConnectionError):
        await policy.run(
            call, retry_if=lambda exc: True, deadline=3.0, clock=lambda: now[0], sleep=advance
        )
    # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 = 1.55 s slept; the next 1.6 s step would end at 3.15.
    assert sleep.slept == [0.05, 0.1, 0.2, 0.4, 0.8]
    assert call.calls == 6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base_s": -1.0},
        {"base_s": 1.0, "max_s": 0.5},
        {"base_s": 0.1, "factor": 0.5},
        {"base_s": 0.1, "jitter": (1.0, 0.5)},
        {"base_s": 0.1, "attempts": 0},
    ],
)
def test_backoff_rejects_an_invalid_policy(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
