"""Money of a measure: annualised cost, simple payback, cost per tonne avoided.

Pure functions over numbers. Conventions (also in ``docs/studies.md``):

* Capital is annualised with the capital recovery factor
  ``CRF = r (1 + r)^n / ((1 + r)^n - 1)`` (``1 / n`` when ``r = 0``).
* Annualised cost = capex x CRF + fixed opex per year.
* Simple payback = capex / (yearly energy-cost savings - opex), undiscounted;
  ``inf`` when the savings do not exceed the opex.
* Cost per tCO2e avoided = (annualised cost - yearly energy-cost savings) / tCO2e
  avoided per year; negative means the measure saves money; ``nan`` when nothing is
  avoided.

References
----------
Short, W., Packey, D. J., Holt, T. (1995). A Manual for the Economic Evaluation of
Energy Efficiency and Renewable Energy Technologies. NREL/TP-462-5173, section 4.
"""

from __future__ import annotations

import math

__all__ = ["annualised_cost", "capital_recovery_factor", "cost_per_tco2e", "simple_payback"]


def capital_recovery_factor(rate: float, years: float) -> float:
    """Capital recovery factor [1/yr].

    Parameters
    ----------
    rate : float [-]
        Real discount rate per year, e.g. 0.06.
    years : float [yr]
        Economic lifetime, > 0.

    Returns
    -------
    float [1/yr]
    """
    if years <= 0:
        raise ValueError(f"lifetime: expected > 0 years, found {years}")
    if rate <= -1:
        raise ValueError(f"discount rate: expected > -1, found {rate}")
    if rate == 0:
        return 1.0 / years
    g = (1.0 + rate) ** years
    return float(rate * g / (g - 1.0))


def annualised_cost(capex: float, opex_per_year: float, rate: float, years: float) -> float:
    """Capex x CRF + opex [currency/yr].

    Parameters
    ----------
    capex : float [currency]
    opex_per_year : float [currency/yr]
    rate : float [-]
    years : float [yr]
    """
    return capex * capital_recovery_factor(rate, years) + opex_per_year


def simple_payback(capex: float, savings_per_year: float, opex_per_year: float = 0.0) -> float:
    """Years until the net savings repay the capital [yr]; ``inf`` if they never do.

    Parameters
    ----------
    capex : float [currency]
    savings_per_year : float [currency/yr]
        Energy-cost savings vs the base scenario.
    opex_per_year : float [currency/yr]
    """
    net = savings_per_year - opex_per_year
    if capex <= 0:
        return 0.0 if net >= 0 else math.inf
    return capex / net if net > 0 else math.inf


def cost_per_tco2e(annual_cost: float, savings_per_year: float, avoided_t_per_year: float) -> float:
    """Net cost per tonne avoided [currency/tCO2e].

    Parameters
    ----------
    annual_cost : float [currency/yr]
        Annualised cost of the measures.
    savings_per_year : float [currency/yr]
        Energy-cost savings vs the base scenario (negative if costs rose).
    avoided_t_per_year : float [tCO2e/yr]
        Emissions avoided vs the base scenario.
    """
    if avoided_t_per_year <= 0 or not math.isfinite(avoided_t_per_year):
        return math.nan
    return (annual_cost - savings_per_year) / avoided_t_per_year
