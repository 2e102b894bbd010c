"""Random processes and distribution functions of the synthetic weather and loads.

Pure NumPy, so that a simulation imports no SciPy (a third of a second at the
start of every ``ems run``). Each function is checked against SciPy in
``tests/test_sim_stochastic.py``: :func:`ar1` against ``scipy.signal.lfilter``
(within 1e-12), :func:`normal_cdf` against ``scipy.special.ndtr`` and
:func:`beta_ppf` against ``scipy.stats.beta.ppf`` (both within 1e-12).

References
----------
DLMF (NIST Digital Library of Mathematical Functions), eq. 8.17.22 (continued
fraction of the incomplete beta function) and 8.17.4 (its symmetry).
Press, W. H. et al. (2007). Numerical Recipes, 3rd ed., sec. 5.2 (modified Lentz
algorithm for continued fractions).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

__all__ = ["ar1", "beta_ppf", "filter_ar1", "normal_cdf"]

FloatArray = npt.NDArray[np.float64]

_BLOCK = 64
"""Series up to this length are filtered step by step."""
_TINY = 1e-300
_EPS = float(np.finfo(np.float64).eps)


def filter_ar1(x: FloatArray, rho: float, gain: float = 1.0) -> FloatArray:
    """The recursion ``y[0] = gain x[0]``, ``y[n] = gain x[n] + rho y[n-1]``.

    Computed in about ``sqrt(n)`` blocks of about ``sqrt(n)`` steps: the recursion
    runs over the steps of all blocks at once (each block started from zero), then
    over the block ends, and each block adds the carry of the one before times the
    powers of ``rho``. Equal to the sequential recursion up to rounding
    (``|rho| <= 1``); a few hundred array operations instead of ``n`` Python steps.

    Parameters
    ----------
    x : ndarray
    rho : float [-]
        Lag-1 coefficient, ``|rho| <= 1``.
    gain : float [-]
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n <= _BLOCK:
        return _filter_loop(x, rho, gain)
    width = math.isqrt(n - 1) + 1  # steps per block
    nb = -(-n // width)
    xb = np.zeros(nb * width)
    xb[:n] = x
    cols = xb.reshape(nb, width).T * gain  # one row per step of a block
    for k in range(1, width):
        cols[k] += rho * cols[k - 1]
    ends = _filter_loop(cols[-1], rho**width, 1.0)  # block ends with the carry
    carry = np.concatenate([[0.0], ends[:-1]])
    cols += np.power(rho, np.arange(1, width + 1, dtype=np.float64))[:, None] * carry[None, :]
    out: FloatArray = cols.T.reshape(-1)[:n]
    return out


def _filter_loop(x: FloatArray, rho: float, gain: float) -> FloatArray:
    """The recursion of :func:`filter_ar1`, step by step."""
    out = np.empty(len(x))
    acc = 0.0
    for i, v in enumerate(x.tolist()):
        acc = gain * v + rho * acc
        out[i] = acc
    return out


def ar1(rng: np.random.Generator, n: int, rho: float) -> FloatArray:
    """Stationary AR(1) series with unit variance and lag-1 correlation ``rho`` [-].

    Draws ``n`` standard normals from ``rng`` and filters them with gain
    ``sqrt(1 - rho**2)``, the first one scaled to the stationary distribution.
    """
    if n == 0:
        return np.zeros(0)
    eps = rng.standard_normal(n)
    rho = float(np.clip(rho, 0.0, 0.9999))
    if rho == 0.0:
        return eps
    eps[0] /= np.sqrt(1.0 - rho * rho)  # start from the stationary distribution
    return filter_ar1(eps, rho, float(np.sqrt(1.0 - rho * rho)))


def normal_cdf(z: FloatArray) -> FloatArray:
    """Standard normal distribution function ``(1 + erf(z / sqrt 2)) / 2`` [-]."""
    z = np.asarray(z, dtype=np.float64)
    flat = [0.5 * math.erfc(-v / math.sqrt(2.0)) for v in z.reshape(-1).tolist()]
    out: FloatArray = np.asarray(flat, dtype=np.float64).reshape(z.shape)
    return out


def _lbeta(a: FloatArray, b: FloatArray) -> FloatArray:
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    out: FloatArray = lg(a) + lg(b) - lg(a + b)
    return out


def _beta_cf(x: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """Continued fraction of ``I_x(a, b)`` (DLMF 8.17.22), modified Lentz; x < (a+1)/(a+b+2)."""
    c = np.ones_like(x)
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    f = d.copy()
    for m in range(1, 300):
        done = True
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + num / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            step = c * d
            f = f * step
            done = done and bool(np.all(np.abs(step - 1.0) <= _EPS))
        if done:
            break
    return f


def _beta_tail(
    x: FloatArray, a: FloatArray, b: FloatArray, lbeta: FloatArray
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """``I_x(a, b)`` for 0 < x < 1 as ``(v, upper)``: ``I = 1 - v`` where ``upper``, else ``v``.

    The upper tail is returned as such so that quantiles near 1 keep their precision.
    """
    upper = x > (a + 1.0) / (a + b + 2.0)  # DLMF 8.17.4: I_x(a, b) = 1 - I_(1-x)(b, a)
    xs, as_, bs = np.where(upper, 1.0 - x, x), np.where(upper, b, a), np.where(upper, a, b)
    front = np.exp(as_ * np.log(xs) + bs * np.log1p(-xs) - lbeta) / as_
    v: FloatArray = front * _beta_cf(xs, as_, bs)
    return v, upper


def _beta_cdf(x: FloatArray, a: FloatArray, b: FloatArray, lbeta: FloatArray) -> FloatArray:
    """Regularised incomplete beta function ``I_x(a, b)`` for 0 < x < 1."""
    v, upper = _beta_tail(x, a, b, lbeta)
    out: FloatArray = np.where(upper, 1.0 - v, v)
    return out


def _beta_start(q: FloatArray, a: FloatArray, b: FloatArray, lb: FloatArray) -> FloatArray:
    """First guess of the beta quantile: the tails' power laws, else the mean."""
    mean = a / (a + b)
    with np.errstate(divide="ignore", over="ignore"):
        low = np.exp((np.log(q) + np.log(a) + lb) / a)  # I_x ~ x**a / (a B) near 0
        high = 1.0 - np.exp((np.log1p(-q) + np.log(b) + lb) / b)  # and its mirror near 1
        below = q < _beta_cdf(mean, a, b, lb)
    x = np.where(below, np.minimum(low, mean), np.maximum(high, mean))
    out: FloatArray = np.clip(x, 1e-300, 1.0 - _EPS)
    return out


def beta_ppf(q: FloatArray, a: FloatArray, b: FloatArray) -> FloatArray:
    """Quantile function of the beta distribution [-].

    Newton steps on the regularised incomplete beta function, kept inside a
    bisection bracket; ``q`` in [0, 1], shapes ``a, b > 0`` (broadcast together).
    """
    q, a, b = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (q, a, b)))
    lb = _lbeta(a, b)
    inner = (q > 0) & (q < 1)
    qi = np.where(inner, q, 0.5)
    lo, hi = np.zeros_like(q), np.ones_like(q)
    x = _beta_start(qi, a, b, lb)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        for _ in range(60):
            v, upper = _beta_tail(x, a, b, lb)
            f = np.where(upper, (1.0 - qi) - v, v - qi)  # I_x - q
            lo = np.where(f < 0, x, lo)
            hi = np.where(f > 0, x, hi)
            pdf = np.exp((a - 1.0) * np.log(x) + (b - 1.0) * np.log1p(-x) - lb)
            nxt = x - f / pdf
            nxt = np.where((nxt >= lo) & (nxt <= hi), nxt, 0.5 * (lo + hi))
            moved = (np.abs(nxt - x) > 4 * _EPS * x) & (hi - lo > 16 * _EPS * x)
            x = nxt
            if not np.any(moved):
                break
    out: FloatArray = np.where(q <= 0, 0.0, np.where(q >= 1, 1.0, x))
    return out
