"""Privacy accounting with dp-accounting: epsilon after t steps, and sigma for a target epsilon.

One DP-SGD step is a Gaussian mechanism (noise multiplier sigma) on a Poisson subsample (rate q):
`PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`, composed t times. Two accountants:
- `rdp` (Renyi DP, Mironov 2017; the moments accountant of Abadi et al. 2016): fast, a little
  loose.
- `pld` (privacy loss distributions, Koskela et al. 2020; Doroshenko et al. 2022): tighter, and it
  models truncated Poisson batches exactly (`TruncatedSubsampledGaussianDpEvent`).
With `rdp`, truncation is accounted by adding t x P(overflow) to delta (the truncated and the
untruncated mechanisms differ only on steps that overflow), reported as `truncation_delta`.
Nothing is accounted by hand here: dp-accounting does all of it.
"""

from __future__ import annotations

import contextlib
import math

import dp_accounting
from dp_accounting import pld, rdp

from pdist.privacy.sampling import overflow_probability
from pdist.registry import ConfigError

ACCOUNTANTS = ("rdp", "pld")


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


class Accountant:
  """epsilon(t) at a fixed delta for t DP-SGD steps of one configuration (cached per t).

  `cap` is the truncated Poisson batch's size (None: no truncation modelled, e.g. for shuffled
  batches, which are accounted as if Poisson sampled and flagged as such by the caller).
  """

  def __init__(self, kind: str, q: float, sigma: float, delta: float, n: int,
               cap: int | None = None):
    self.kind, self.q, self.sigma, self.delta, self.n, self.cap = kind, q, sigma, delta, n, cap
    self.overflow = overflow_probability(n, q, cap) if cap is not None else 0.0
    self._cache: dict[int, float] = {}

  def event(self, steps: int, sigma: float | None = None) -> dp_accounting.DpEvent:
    sigma = self.sigma if sigma is None else sigma
    if self.kind == "pld" and self.cap is not None and self.cap < self.n:
      one = dp_accounting.TruncatedSubsampledGaussianDpEvent(
          dataset_size=self.n, sampling_probability=self.q, truncated_batch_size=self.cap,
          noise_multiplier=sigma)
    else:
      one = dp_accounting.PoissonSampledDpEvent(self.q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(one, steps)

  def fresh(self) -> dp_accounting.PrivacyAccountant:
    return pld.PLDAccountant() if self.kind == "pld" else rdp.RdpAccountant()

  def truncation_delta(self, steps: int) -> float:
    """What truncation adds to delta (rdp only; pld models it inside epsilon)."""
    return 0.0 if self.kind == "pld" else steps * self.overflow

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
