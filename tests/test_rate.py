import pytest

from dirjax.compress import rank_for_rate, rate_for_rank
from dirjax.compress.rate import resolve_rank
from dirjax.errors import ConfigError


def test_rate_formula_counts_codes_decoder_and_bias():
    # 100 x 10 at k = 2: stored 100*2 + 2*10 + 10 = 230 numbers instead of 1000
    assert rate_for_rank(100, 10, 2) == pytest.approx(1000 / 230)


@pytest.mark.parametrize("v,d,rate,k", [(49152, 576, 10, 56), (30522, 384, 10, 37),
                                        (262144, 2048, 10, 203), (50257, 768, 4, 189)])
def test_rank_for_rate_is_the_largest_rank_reaching_the_rate(v, d, rate, k):
    assert rank_for_rate(v, d, rate) == k
    assert rate_for_rank(v, d, k) >= rate > rate_for_rank(v, d, k + 1)


def test_rank_rate_round_trip():
    for k in range(1, 384):
        assert rank_for_rate(30522, 384, rate_for_rank(30522, 384, k)) == k


@pytest.mark.parametrize("rate", [1000, 0.5, 0, -3, float("nan"), float("inf")])
def test_rates_without_a_valid_rank_are_config_errors(rate):
    with pytest.raises(ConfigError):
        rank_for_rate(1000, 16, rate)


@pytest.mark.parametrize("rank", [0, -1, 16, 17, 2.5, True])
def test_bad_ranks(rank):
    with pytest.raises(ConfigError):
        rate_for_rank(1000, 16, rank)


def test_resolve_rank_needs_exactly_one():
    assert resolve_rank(1000, 16, rank=3) == 3
    assert resolve_rank(1000, 16, rate=rate_for_rank(1000, 16, 3)) == 3
    for kw in ({}, {"rate": 2, "rank": 3}):
        with pytest.raises(ConfigError, match="exactly one"):
            resolve_rank(1000, 16, **kw)
