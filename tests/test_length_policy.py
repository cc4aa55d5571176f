"""LengthPolicy (docs/definitions.md §2): sampled lengths follow the configured distribution (chi-square against
closed-form probabilities written here, not read from `support`), p_full and start_step are honoured, each
mode/granularity returns the documented decoder input, and bad settings or decode lengths give one clear
error naming the argument and the allowed range."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from vartok.tokenizers.length import LengthPolicy, check_length

DRAWS = 20_000
P_MIN = 1e-3  # fixed seeds, so a pass is deterministic; a wrong distribution gives p << 1e-6 at 20k draws


def expected_probs(distribution: str, n: int, lengths=(), weights=()) -> dict[int, float]:
    """The distribution of k by enumeration (the oracle)."""
    if distribution == "uniform":
        return {k: 1 / n for k in range(1, n + 1)}
    if distribution == "pow2":
        values, k = {n}, 1
        while k < n:
            values.add(k)
            k *= 2
        return {k: 1 / len(values) for k in values}
    if distribution == "uniform_pow2":
        probs: dict[int, float] = {}
        for k in range(1, n + 1):
            rounded = min(1 << (k - 1).bit_length(), n)  # smallest power of two >= k, capped at N
            probs[rounded] = probs.get(rounded, 0) + 1 / n
        return probs
    total = sum(weights)
    probs = {}
    for k, w in zip(lengths, weights):
        probs[k] = probs.get(k, 0) + w / total
    return probs


def with_p_full(probs: dict[int, float], n: int, p_full: float) -> dict[int, float]:
    mixed = {k: (1 - p_full) * p for k, p in probs.items()}
    mixed[n] = mixed.get(n, 0) + p_full
    return mixed


def assert_follows(draws: torch.Tensor, probs: dict[int, float]) -> None:
    values, counts = np.unique(draws.numpy(), return_counts=True)
    support = {k for k, p in probs.items() if p > 0}
    assert set(values.tolist()) <= support, f"drew {set(values.tolist()) - support}, outside the support"
    keys = sorted(support)
    observed = np.array([counts[values == k].sum() for k in keys], dtype=float)
    expected = np.array([probs[k] for k in keys]) * len(draws)
    p_value = chisquare(observed, expected).pvalue if len(keys) > 1 else 1.0
    assert p_value > P_MIN, f"chi-square p={p_value:.2e}: observed {observed} vs expected {expected}"


CASES = [
    ("uniform", 32, {}),
    ("uniform", 7, {}),
    ("pow2", 32, {}),
    ("pow2", 24, {}),  # N not a power of two: {1, 2, 4, 8, 16, 24}
    ("uniform_pow2", 32, {}),
    ("uniform_pow2", 20, {}),  # 17..20 round up to 32, capped at 20
    ("list", 16, {"lengths": [1, 3, 8, 16], "weights": [1.0, 2.0, 5.0, 0.5]}),
    ("list", 16, {"lengths": [2, 5, 9], "weights": [3, 0, 1]}),  # a zero weight is never drawn
    ("list", 16, {"lengths": [4, 6]}),  # no weights = equal weights
]


@pytest.mark.parametrize(("distribution", "n", "extra"), CASES)
@pytest.mark.parametrize("p_full", [0.0, 0.3])
def test_draws_follow_the_distribution(distribution, n, extra, p_full):
    policy = LengthPolicy(mode="tail_drop", granularity="sample", distribution=distribution, p_full=p_full, **extra)
    draws = policy.draw(DRAWS, n, torch.Generator().manual_seed(1))
    assert draws.dtype == torch.int64 and draws.shape == (DRAWS,)
    lengths = extra.get("lengths", ())
    probs = expected_probs(distribution, n, lengths, extra.get("weights") or [1.0] * len(lengths))
    assert_follows(draws, with_p_full(probs, n, p_full))


def test_chi_square_rejects_a_wrong_distribution():
    # The oracle has power: uniform_pow2 draws are not uniform over their support (1/32 vs 16/32 for k = 32).
    draws = LengthPolicy(mode="nested_dropout", granularity="sample", distribution="uniform_pow2").draw(
        DRAWS, 32, torch.Generator().manual_seed(1)
    )
    flat = {k: 1 / 6 for k in (1, 2, 4, 8, 16, 32)}
    with pytest.raises(AssertionError, match="chi-square"):
        assert_follows(draws, flat)


def test_batch_granularity_draws_one_length_per_step_with_the_distribution():
    policy = LengthPolicy(mode="tail_drop", granularity="batch", distribution="pow2", p_full=0.2)
    generator = torch.Generator().manual_seed(2)
    draws = []
    for step in range(4000):
        sample = policy.sample(batch=8, num_tokens=16, step=step, generator=generator)
        assert sample.keep_len is None and sample.fill == "pad"
        draws.append(sample.length)
    assert_follows(torch.tensor(draws), with_p_full(expected_probs("pow2", 16), 16, 0.2))


def test_sample_granularity_and_nested_dropout_return_per_sample_lengths():
    generator = torch.Generator().manual_seed(3)
    tail = LengthPolicy(mode="tail_drop", granularity="sample", distribution="uniform")
    sample = tail.sample(batch=64, num_tokens=16, step=0, generator=generator)
    assert sample.keep_len.shape == (64,) and sample.fill == "pad"
    assert sample.length == int(sample.keep_len.max())  # the padded sequence is as long as the longest kept
    assert len(set(sample.keep_len.tolist())) > 1  # per sample, not one k for the batch
    nested = LengthPolicy(mode="nested_dropout", granularity="sample", distribution="uniform")
    sample = nested.sample(batch=64, num_tokens=16, step=0, generator=generator)
    assert sample.length == 16 and sample.fill == "mask_token"  # the sequence stays N long
    assert sample.keep_len.shape == (64,) and len(set(sample.keep_len.tolist())) > 1


def test_p_full_one_always_keeps_every_token():
    policy = LengthPolicy(mode="tail_drop", granularity="sample", distribution="uniform", p_full=1.0)
    assert torch.equal(policy.draw(500, 12), torch.full((500,), 12))


@pytest.mark.parametrize(
    ("mode", "granularity"), [("tail_drop", "batch"), ("tail_drop", "sample"), ("nested_dropout", "sample")]
)
def test_start_step_and_mode_none_keep_every_token(mode, granularity):
    policy = LengthPolicy(mode=mode, granularity=granularity, distribution="list", lengths=[3], start_step=100)
    for step in (0, 50, 99):
        assert policy.sample(4, 16, step) == (16, None, "pad")
    dropped = policy.sample(4, 16, 100)  # from start_step on, the only listed length 3 is used
    if granularity == "batch":
        assert dropped.length == 3 and dropped.keep_len is None
    else:
        assert dropped.keep_len.tolist() == [3, 3, 3, 3]
    assert LengthPolicy(mode="none").sample(4, 16, 10**6) == (16, None, "pad")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distribution": "list", "lengths": []}, r"lengths must be a non-empty list .*\[1, num_tokens\]"),
        ({"distribution": "list", "lengths": [0, 2]}, r"lengths must be integers in \[1, num_tokens\]"),
        ({"distribution": "list", "lengths": [2.5]}, r"lengths must be integers in \[1, num_tokens\]"),
        ({"distribution": "list", "lengths": [1, 2], "weights": [0.0, 0.0]}, r"weights .* sum > 0, got \[0.0, 0.0\]"),
        ({"distribution": "list", "lengths": [1, 2], "weights": [-1.0, 3.0]}, r"weights must be 2 finite numbers >= 0"),
        ({"distribution": "list", "lengths": [1, 2], "weights": [1.0]}, r"weights must be 2 finite numbers"),
        ({"distribution": "list", "lengths": [1, 2], "weights": [1.0, float("nan")]}, "weights must be 2 finite"),
        ({"distribution": "list", "lengths": [1, 2], "weights": [1.0, float("inf")]}, "weights must be 2 finite"),
        ({"distribution": "pow2", "lengths": [1, 2]}, "only used with distribution 'list'"),
        ({"distribution": "gauss"}, "distribution must be uniform, pow2, uniform_pow2 or list, got 'gauss'"),
        ({"p_full": 1.5}, r"p_full must be a probability in \[0, 1\], got 1.5"),
        ({"p_full": -0.1}, r"p_full must be a probability in \[0, 1\]"),
        ({"start_step": -1}, "start_step must be an int >= 0, got -1"),
        ({"mode": "drop"}, "mode must be none, tail_drop or nested_dropout, got 'drop'"),
        ({"granularity": "token"}, "granularity must be batch or sample, got 'token'"),
        ({"mode": "nested_dropout", "granularity": "batch"}, "granularity must be 'sample' for nested_dropout"),
    ],
)
def test_bad_policy_names_the_argument_and_the_allowed_range(kwargs, message):
    with pytest.raises(ValueError, match=f"length_policy.*{message}"):
        LengthPolicy(**kwargs)


def test_listed_length_above_num_tokens_is_named_when_n_is_known():
    policy = LengthPolicy(mode="tail_drop", distribution="list", lengths=[4, 40])
    with pytest.raises(ValueError, match=r"length_policy.lengths must be in \[1, 32\] \(num_tokens\), got \[4, 40\]"):
        policy.draw(3, 32)


@pytest.mark.parametrize(
    ("length", "message"),
    [
        (0, r"int in \[1, 8\].*got 0"),
        (9, r"int in \[1, 8\].*got 9"),
        (-1, "got -1"),
        (2.0, "got 2.0"),
        (True, "got True"),
        (torch.tensor([1, 2]), r"shape \(3,\) with values in \[1, 8\], got a tensor of shape \(2,\)"),
        (torch.tensor([[1], [2], [3]]), r"got a tensor of shape \(3, 1\)"),
        (torch.tensor([1.0, 2.0, 3.0]), "got a torch.float32 tensor"),
        (torch.tensor([True, True, False]), "got a torch.bool tensor"),
        (torch.tensor(2.5), "got a torch.float32 tensor"),  # a 0-dim float is not silently truncated
        (torch.tensor([1, 0, 3]), r"values in \[1, 8\], got values \[1, 0, 3\]"),
        (torch.tensor([1, 9, 3]), r"values in \[1, 8\], got values \[1, 9, 3\]"),
    ],
)
def test_bad_decode_length_names_the_allowed_range(length, message):
    with pytest.raises(ValueError, match=f"length must be .*{message}"):
        check_length(length, num_tokens=8, batch=3)


def test_good_decode_lengths_are_normalised():
    assert check_length(None, 8, 3) == 8
    assert check_length(np.int64(5), 8, 3) == 5 and type(check_length(np.int64(5), 8, 3)) is int
    assert check_length(torch.tensor(4), 8, 3) == 4
    per_sample = check_length(torch.tensor([1, 8, 3], dtype=torch.int32), 8, 3)
    assert per_sample.dtype == torch.int64 and per_sample.tolist() == [1, 8, 3]
