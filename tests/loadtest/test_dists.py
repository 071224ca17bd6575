import random

import pytest

from loadtest.dists import DistError, parse_dist


@pytest.mark.parametrize("spec,kind", [("64", "const"), ("uniform:16:128", "uniform"), ("normal:100:20", "normal"),
                                       ("lognormal:128:0.5", "lognormal"), ("choice:8,16,32", "choice")])
def test_parse_kinds(spec: str, kind: str) -> None:
    assert parse_dist(spec).kind == kind


def test_same_seed_same_samples() -> None:
    d = parse_dist("lognormal:128:0.8")
    a = [d.sample(random.Random(7)) for _ in range(3)]
    assert a == [d.sample(random.Random(7)) for _ in range(3)]
    r1, r2 = random.Random(1), random.Random(1)
    assert [d.sample(r1) for _ in range(100)] == [d.sample(r2) for _ in range(100)]


def test_samples_respect_bounds_and_shape() -> None:
    rng = random.Random(3)
    uni = [parse_dist("uniform:16:128").sample(rng) for _ in range(2000)]
    assert min(uni) >= 16 and max(uni) <= 128 and 60 < sum(uni) / len(uni) < 84
    assert all(parse_dist("64").sample(rng) == 64 for _ in range(10))
    norm = [parse_dist("normal:10:50").sample(rng) for _ in range(500)]
    assert min(norm) >= 1  # clamped
    assert set(parse_dist("choice:8,16").sample(rng) for _ in range(200)) == {8, 16}


def test_mean_and_upper() -> None:
    assert parse_dist("uniform:10:20").mean() == 15
    assert parse_dist("uniform:10:20").upper() == 20
    assert parse_dist("normal:100:10").upper() == 131


@pytest.mark.parametrize("spec", ["", "abc", "uniform:5", "uniform:9:3", "gamma:1:2", "normal:-1:2", "0",
                                  "lognormal:1:x", "nan"])
def test_bad_specs_name_the_spec(spec: str) -> None:
    with pytest.raises(DistError) as err:
        parse_dist(spec)
    assert repr(spec) in str(err.value)
