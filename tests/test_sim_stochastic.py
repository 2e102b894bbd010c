"""The simulation's own AR(1) filter and distribution functions against SciPy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal, special, stats

from ems.sim import stochastic as st
from ems.sim.weather import _KT_DAILY_MAX, _KT_DAILY_STD

BOUND = 1e-12


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 366, 1000, 35_136, 527_041])
@pytest.mark.parametrize("rho", [0.0, 0.5, 0.7, 0.9835, 0.9999, 1.0])
def test_filter_equals_lfilter(n, rho):
    x = np.random.default_rng(n).standard_normal(n)
    gain = float(np.sqrt(1.0 - rho * rho)) or 0.3
    ref = signal.lfilter([gain], [1.0, -rho], x)
    got = st.filter_ar1(x, rho, gain)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < BOUND * max(1.0, np.abs(ref).max())


def test_ar1_draws_in_a_fixed_order():
    a = st.ar1(np.random.default_rng(5), 1000, 0.8)
    eps = np.random.default_rng(5).standard_normal(1000)
    eps[0] /= np.sqrt(1 - 0.64)
    ref = signal.lfilter([np.sqrt(1 - 0.64)], [1.0, -0.8], eps)
    assert np.abs(a - ref).max() < BOUND
    assert np.array_equal(
        st.ar1(np.random.default_rng(5), 10, 0.0), np.random.default_rng(5).standard_normal(10)
    )
    assert st.ar1(np.random.default_rng(5), 0, 0.5).shape == (0,)


def test_normal_cdf_equals_ndtr():
    z = np.concatenate([np.linspace(-40, 40, 20001), [0.0, -0.0]])
    assert np.abs(st.normal_cdf(z) - special.ndtr(z)).max() < BOUND
    assert st.normal_cdf(z.reshape(-1, 1)).shape == (z.size, 1)


def _shapes(target: float) -> tuple[float, float]:
    """The beta shapes :func:`ems.sim.weather.daily_clearness` uses for a monthly target."""
    m = target / _KT_DAILY_MAX
    var = min((_KT_DAILY_STD / _KT_DAILY_MAX) ** 2, 0.9 * m * (1 - m))
    k = m * (1 - m) / var - 1.0
    return m * k, (1 - m) * k


@pytest.mark.parametrize("target", [0.02, 0.1, 0.24, 0.33, 0.45, 0.55, 0.7, 0.7566])
def test_beta_ppf_equals_scipy(target):
    a, b = _shapes(target)
    z = np.random.default_rng(1).standard_normal(2000) * 2
    q = np.concatenate([special.ndtr(z), [0.0, 1.0, 1e-12, 1 - 1e-12, 0.5]])
    got = st.beta_ppf(q, a, b)
    ref = stats.beta.ppf(q, a, b)
    assert np.abs(got - ref).max() < BOUND
    assert got[-5] == 0.0 and got[-4] == 1.0


def test_beta_ppf_broadcasts_shapes():
    q = np.array([0.1, 0.5, 0.9])
    a = np.array([2.0, 3.0, 5.0])
    b = np.array([5.0, 3.0, 2.0])
    assert np.abs(st.beta_ppf(q, a, b) - stats.beta.ppf(q, a, b)).max() < BOUND
