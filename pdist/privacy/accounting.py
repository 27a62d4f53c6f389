"""Privacy accounting with dp-accounting: epsilon after t steps, and sigma for a target epsilon.

One DP-SGD step is a Gaussian mechanism (noise multiplier sigma) on a subsample of the records.
Which subsample, and so which neighbouring relation, is the mechanism's:
- Poisson sampling (each record independently with probability q) under *add or remove one
  record*: `PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`, composed t times. DP-SGD and
  DP-FedAvg without secure aggregation.
- Sampling a fixed number m of the n records without replacement under *replace one record*
  (n public): `SampledWithoutReplacementDpEvent(n, m, GaussianDpEvent(sigma C / Delta))`, with
  Delta the sum's replace-one sensitivity (2C, plus any rounding the caller adds; Wang, Balle
  and Kasiviswanathan 2019, Theorem 27). DP-FedAvg with secure aggregation: see
  strategies/federated.py for why.

Three accountants, `config.privacy.accountant`, each named with its conversion in summary.json:
- `rdp`: Renyi DP (Mironov 2017) from dp-accounting's RdpAccountant, converted to (epsilon, delta)
  with dp-accounting's conversion (Canonne, Kamath and Steinke 2020, Proposition 12; Asoodeh et
  al. 2020), which is tighter than the one Abadi et al. used.
- `rdp_classic`: the same RDP curve with the classic conversion of Mironov 2017, Proposition 3,
  epsilon = min over orders alpha of RDP(alpha) + log(1/delta) / (alpha - 1), which is what Abadi
  et al. 2016's moments accountant computes: it reproduces published tables (Abadi et al.:
  q = 0.01, sigma = 4, 10,000 steps, delta 1e-5 -> 1.26; the TF Privacy tutorial: q = 256/60000,
  sigma = 1.1, 60 epochs -> 3.01), where `rdp` gives 1.04 and 2.60.
- `pld`: privacy loss distributions (Koskela et al. 2020; Doroshenko et al. 2022): the tightest,
  and it models truncated Poisson batches exactly (`TruncatedSubsampledGaussianDpEvent`).

Truncated Poisson batches under `rdp` / `rdp_classic`. A batch is cut to `cap` records when more
are drawn (privacy/sampling.py). The accountants above bound the untruncated mechanism M~; the run
is the truncated M. Over T steps the two can be coupled (same draws) so that they differ only when
some step overflows, so for every dataset D the total variation distance between M(D) and M~(D) is
at most eta = T * P(overflow), P(overflow) taken for the larger neighbour (n + 1 records) so that
it bounds both. Then for every set S of outcomes and neighbours D, D':
    P[M(D) in S] <= P[M~(D) in S] + eta <= e^eps P[M~(D') in S] + delta + eta
                 <= e^eps (P[M(D') in S] + eta) + delta + eta,
so M is (eps, delta + (1 + e^eps) eta)-DP. That is `truncation_delta` = (1 + e^eps) T P(overflow),
and the guarantee's delta is config.privacy.delta + truncation_delta (`delta_total` in
summary.json). The cap is chosen (sampling.batch_cap) so that P(overflow) <= 1e-10 delta: for runs
of up to 10^6 steps T P(overflow) <= 1e-4 delta, which keeps truncation_delta below delta / 10 for
every epsilon up to 6.9. Under `pld` the truncation is inside epsilon and truncation_delta is 0.

Nothing is accounted by hand here but the classic conversion (one line, which dp-accounting does
not offer): dp-accounting computes every RDP curve, PLD and calibration.
"""

from __future__ import annotations

import contextlib
import math

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from pdist.privacy.sampling import overflow_probability
from pdist.registry import ConfigError

ACCOUNTANTS = ("rdp", "rdp_classic", "pld")

# What summary.json says each accountant is: the composition and the conversion to (eps, delta).
DESCRIPTIONS = {
    "rdp": "dp-accounting RdpAccountant; RDP to (epsilon, delta) by dp-accounting's conversion "
           "(Canonne, Kamath, Steinke 2020, Prop. 12)",
    "rdp_classic": "dp-accounting RdpAccountant; RDP to (epsilon, delta) by the classic "
                   "conversion min_a RDP(a) + log(1/delta)/(a-1) (Mironov 2017, Prop. 3; the "
                   "moments accountant of Abadi et al. 2016)",
    "pld": "dp-accounting PLDAccountant (privacy loss distributions; truncation modelled "
           "exactly)",
}


@contextlib.contextmanager
def _quiet():
  """dp-accounting warns through absl for every RDP order it skips; keep the run's output clean."""
  from absl import logging as absl_logging
  level = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(level)


class ClassicRdpAccountant(rdp.RdpAccountant):
  """dp-accounting's RDP accountant with the classic RDP -> (epsilon, delta) conversion."""

  def get_epsilon(self, target_delta: float) -> float:
    with np.errstate(divide="ignore", invalid="ignore"):
      eps = self.rdp + math.log(1 / target_delta) / (self.orders - 1)
    eps = eps[self.orders > 1]
    return float(max(0.0, np.min(eps)))


class Accountant:
  """epsilon(t) at a fixed delta for t DP-SGD steps of one configuration (cached per t).

  `cap` is the truncated Poisson batch's size (None: no truncation modelled, e.g. for shuffled
  batches, which are accounted as if Poisson sampled and flagged as such by the caller).
  `sample_size` m switches to sampling m of the n records without replacement under the
  replace-one relation; `sensitivity` is then the sum's replace-one sensitivity in units of the
  clip norm (2 for clipped sums; the noise's standard deviation is sigma clip norms).
  """

  def __init__(self, kind: str, q: float, sigma: float, delta: float, n: int,
               cap: int | None = None, sample_size: int | None = None,
               sensitivity: float = 1.0):
    self.kind, self.q, self.sigma, self.delta, self.n, self.cap = kind, q, sigma, delta, n, cap
    self.sample_size, self.sensitivity = sample_size, sensitivity
    if sample_size is not None and kind == "pld":
      raise ConfigError("config.privacy.accountant='pld' does not account sampling without "
                        "replacement (replace-one); use 'rdp' or 'rdp_classic'")
    # the coupling must hold for both neighbours: the larger one (n + 1 records) overflows more
    self.overflow = overflow_probability(n + 1, q, cap) if cap is not None else 0.0
    self._cache: dict[int, float] = {}

  @property
  def relation(self) -> str:
    return "replace one record" if self.sample_size is not None else "add or remove one record"

  @property
  def description(self) -> str:
    return DESCRIPTIONS[self.kind]

  def event(self, steps: int, sigma: float | None = None) -> dp_accounting.DpEvent:
    sigma = self.sigma if sigma is None else sigma
    if self.sample_size is not None:
      one = dp_accounting.SampledWithoutReplacementDpEvent(
          self.n, self.sample_size, dp_accounting.GaussianDpEvent(sigma / self.sensitivity))
    elif self.kind == "pld" and self.cap is not None and self.cap < self.n:
      one = dp_accounting.TruncatedSubsampledGaussianDpEvent(
          dataset_size=self.n, sampling_probability=self.q, truncated_batch_size=self.cap,
          noise_multiplier=sigma)
    else:
      one = dp_accounting.PoissonSampledDpEvent(self.q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(one, steps)

  def fresh(self) -> dp_accounting.PrivacyAccountant:
    if self.kind == "pld":
      return pld.PLDAccountant()
    relation = (dp_accounting.NeighboringRelation.REPLACE_ONE if self.sample_size is not None
                else dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    cls = ClassicRdpAccountant if self.kind == "rdp_classic" else rdp.RdpAccountant
    return cls(neighboring_relation=relation)

  def truncation_delta(self, steps: int) -> float:
    """What truncation adds to delta: (1 + e^epsilon) T P(overflow) (rdp kinds; pld models it
    inside epsilon). See the module's docstring for the proof."""
    if self.kind == "pld" or self.overflow == 0.0 or steps <= 0:
      return 0.0
    eps = self.epsilon(steps)
    return math.inf if eps > 700 else (1 + math.exp(eps)) * steps * self.overflow

  def epsilon(self, steps: int) -> float:
    """The epsilon spent after `steps` updates, at this accountant's delta."""
    if steps <= 0:
      return 0.0
    if self.sigma <= 0:
      return math.inf
    if steps not in self._cache:
      with _quiet():
        self._cache[steps] = float(self.fresh().compose(self.event(steps)).get_epsilon(self.delta))
    return self._cache[steps]

  def calibrate(self, target_epsilon: float, steps: int) -> float:
    """The smallest noise multiplier whose epsilon after `steps` is at most `target_epsilon`
    (dp-accounting's own search)."""
    bracket = dp_accounting.ExplicitBracketInterval(0.05, 500.0)
    try:
      with _quiet():
        return float(dp_accounting.calibrate_dp_mechanism(
            self.fresh, lambda sigma: self.event(steps, sigma), target_epsilon, self.delta,
            bracket_interval=bracket, tol=1e-4))
    except (ValueError, RuntimeError) as e:
      raise ConfigError(
          f"config.privacy.target_epsilon={target_epsilon} cannot be reached in {steps} steps at "
          f"sampling rate {self.q:.4g} and delta {self.delta} with a noise multiplier in "
          f"[0.05, 500] ({e}); raise the target, or lower config.train.steps or "
          "config.data.batch_size") from None
