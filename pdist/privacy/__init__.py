"""Differential privacy: DP-SGD (Abadi et al. 2016) with Poisson sampling and dp-accounting.

    --config.privacy.mechanism=dpsgd --config.privacy.clip_norm=1.0 \
    --config.privacy.noise_multiplier=1.1      # or --config.privacy.target_epsilon=3.0

What it guarantees: the parameters released at every step (and so everything computed from them)
are (epsilon, delta)-differentially private with respect to adding or removing any one *training
example*: `epsilon` in each metrics row is the budget spent so far, at config.privacy.delta
(plus `truncation_delta` under the rdp accountant, see accounting.py). It assumes Poisson
sampling (each example in each step's batch independently with probability
q = batch_size / num_train); with `sampling=shuffle` (fixed shuffled batches) the same epsilon is
reported as if Poisson sampled, and summary.json says the run carries no such guarantee.

What it does not protect: the test set and the eval metrics computed on it; anything derived from
the training data outside training (preprocessing, the choice of hyperparameters by looking at
results, repeated runs); the training loss and accuracy in metrics.jsonl (computed on the private
batches, for the researcher's eyes; do not publish them as private). Each example is one unit of
privacy: a person with many examples gets less protection.

For federated learning, `dpfedavg` (DP-FedAvg, McMahan et al. 2018) makes the *client* the unit:
see DPFedAvg below and strategies/federated.py.

The sampling and the noise are drawn from keys derived from config.train.seed: for a real
release the seed must be secret (anyone who knows it can regenerate and subtract the noise).

Pieces, one idea each: sampling.py (Poisson batches with a fixed cap), clipping.py (per-example
clipped sums), noise.py (the Gaussian mechanism, added once per update after aggregation),
accounting.py (dp-accounting's RDP and PLD accountants, calibration to a target epsilon).
Supported strategies: `single` and `sync` (clipping on each device, noise once for the global
batch, so sync == single for the same seed). `ps` is refused: its asynchronous per-worker
gradients would need their own clipping and accounting story.
"""

from __future__ import annotations

import math

import ml_collections

from pdist.privacy import accounting, clipping, noise, sampling
from pdist.registry import PRIVACY, ConfigError, check_choice, check_unused_at_default

SAMPLING = ("poisson", "shuffle")


def privacy_config() -> ml_collections.ConfigDict:
  """config.privacy: the mechanism and its parameters (ignored, and must stay default, for none)."""
  c = ml_collections.ConfigDict()
  c.mechanism = "none"          # none / dpsgd / dpfedavg (federated: user-level)
  c.clip_norm = 1.0             # C: every example's gradient is clipped to this L2 norm (inf: none)
  c.noise_multiplier = 1.0      # sigma: noise stddev on the clipped sum is sigma * C
  c.target_epsilon = 0.0        # > 0: calibrate sigma so that epsilon after train.steps is this
  c.delta = 1e-5                # the delta at which epsilon is reported
  c.sampling = "poisson"        # poisson (the DP guarantee) / shuffle (fixed batches; no guarantee)
  c.accountant = "rdp"          # rdp (fast; adds truncation to delta) / pld (tight, ~2 s a row)
  return c


def _validate_none(config) -> None:
  check_unused_at_default(config, "privacy", privacy_config(), "mechanism",
                          "set config.privacy.mechanism='dpsgd' or leave the field at its default")


def _validate_dpsgd(config) -> None:
  if config.strategy not in ("single", "sync"):
    hint = " (use config.privacy.mechanism='dpfedavg')" if config.strategy == "federated" else ""
    raise ConfigError(f"config.privacy.mechanism='dpsgd' runs with config.strategy='single' or "
                      f"'sync', not '{config.strategy}' (its per-worker gradients would need "
                      f"their own clipping and accounting){hint}")
  if config.data.name == "quadratic":
    raise ConfigError("config.privacy.mechanism='dpsgd' needs training examples to protect; "
                      "config.data.name='quadratic' has none")
  _validate_mechanism(config)
  check_choice(config, "privacy.sampling", SAMPLING)


def _validate_dpfedavg(config) -> None:
  if config.strategy != "federated":
    raise ConfigError(f"config.privacy.mechanism='dpfedavg' (user-level DP for federated "
                      f"learning) runs with config.strategy='federated', not "
                      f"'{config.strategy}'; use 'dpsgd' there")
  _validate_mechanism(config)
  if config.privacy.sampling != "poisson":
    raise ConfigError("config.privacy.sampling does not apply to 'dpfedavg': clients are Poisson "
                      "sampled at rate clients_per_round / clients; leave it at its default")


def _validate_mechanism(config) -> None:
  """The checks DP-SGD and DP-FedAvg share: clip norm, noise, delta, target, accountant."""
  p = config.privacy
  if not p.clip_norm > 0 or math.isnan(p.clip_norm):
    raise ConfigError(f"config.privacy.clip_norm must be positive (inf: no clipping), got "
                      f"{p.clip_norm}")
  if not (p.noise_multiplier >= 0 and math.isfinite(p.noise_multiplier)):
    raise ConfigError(f"config.privacy.noise_multiplier must be finite and non-negative, got "
                      f"{p.noise_multiplier}")
  if math.isinf(p.clip_norm) and (p.noise_multiplier > 0 or p.target_epsilon > 0):
    raise ConfigError("config.privacy.clip_norm=inf (no clipping) leaves the sensitivity unbounded: "
                      "noise sigma * C would be infinite; use it only with noise_multiplier=0")
  if not 0 < p.delta < 1:
    raise ConfigError(f"config.privacy.delta must be in (0, 1), got {p.delta}")
  if not (p.target_epsilon >= 0 and math.isfinite(p.target_epsilon)):
    raise ConfigError(f"config.privacy.target_epsilon must be finite and non-negative (0: use "
                      f"config.privacy.noise_multiplier), got {p.target_epsilon}")
  check_choice(config, "privacy.accountant", accounting.ACCOUNTANTS)


PRIVACY.register("none", config=privacy_config, validate=_validate_none, group="privacy")(None)


@PRIVACY.register("dpsgd", validate=_validate_dpsgd)
class DPSGD:
  """DP-SGD for one run: batch selection, the clipped gradient, the noise and the accountant.

  `shards` is how many pieces one batch is cut into (devices x accumulation steps): the batch cap
  is a multiple of it, and each piece's clipped sum is divided by its expected share.
  """

  name = "dpsgd"
  unit = "training example"   # what one record of the guarantee is

  def __init__(self, config, num_train: int, shards: int = 1, batch_size: int | None = None):
    p = config.privacy
    self.num_train = num_train
    self.batch_size = config.data.batch_size if batch_size is None else batch_size
    self.clip_norm, self.delta = float(p.clip_norm), float(p.delta)
    self.sampling, self.kind = p.sampling, p.accountant
    self.q = self.batch_size / num_train
    self.cap = sampling.batch_cap(num_train, self.q, shards) if p.sampling == "poisson" else None
    self.accountant = accounting.Accountant(self.kind, self.q, float(p.noise_multiplier),
                                            self.delta, num_train, self.cap)
    if p.target_epsilon > 0:
      self.accountant.sigma = self.accountant.calibrate(float(p.target_epsilon),
                                                        config.train.steps)
    self.noise_multiplier = self.accountant.sigma

  @property
  def poisson(self) -> bool:
    return self.cap is not None

  def grad_fn(self, task, expected_examples: float, sample_batch=None):
    """The per-call clipped gradient (see clipping.py); `sample_batch` lets it check whether the
    model allows the fast dense method."""
    if task.per_example_loss is None:
      raise ConfigError(f"config.privacy.mechanism='dpsgd' needs per-example losses, which task "
                        f"'{task.name}' does not give")
    grad = clipping.clipped_grad_fn(task, self.clip_norm, expected_examples, sample_batch)
    self.method = getattr(grad, "method", "vmap")
    return grad

  def noise(self):
    """The central transformation: N(0, (sigma C / B)^2) on the averaged clipped gradient."""
    if self.noise_multiplier == 0:
      return noise.gaussian_noise(0.0)
    return noise.gaussian_noise(self.noise_multiplier * self.clip_norm / self.batch_size)

  def batches(self, seed: int, step: int, num_steps: int):
    """{"idx", "mask"} [num_steps, cap] of Poisson batches."""
    idx, mask = sampling.poisson_batches(seed, step, num_steps, self.num_train, self.q, self.cap)
    return {"idx": idx, "mask": mask}

  def row_metrics(self, step: int) -> dict[str, float]:
    return {"epsilon": self.accountant.epsilon(step)}

  def describe(self, step: int) -> dict:
    """What summary.json says about the guarantee after `step` updates."""
    out = {"mechanism": self.name, "epsilon": self.accountant.epsilon(step), "delta": self.delta,
           "accountant": self.kind, "sampling": self.sampling, "sampling_rate": self.q,
           "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm,
           "clipping": getattr(self, "method", "vmap")}
    if self.poisson:
      out.update(batch_cap=self.cap, overflow_probability=self.accountant.overflow,
                 truncation_delta=self.accountant.truncation_delta(step),
                 guarantee=f"({out['epsilon']:.4g}, "
                           f"{self.delta + self.accountant.truncation_delta(step):.3g})-DP for "
                           f"each {self.unit}")
    else:
      out["guarantee"] = ("none: fixed shuffled batches; epsilon is what Poisson sampling at the "
                          "same rate would give")
    return out


@PRIVACY.register("dpfedavg", validate=_validate_dpfedavg)
class DPFedAvg(DPSGD):
  """User-level DP for federated learning (DP-FedAvg, McMahan et al. 2018): the record is a
  *client*. Each round samples every client independently with probability
  q = clients_per_round / clients (Poisson, padded to a cap like DP-SGD's batches), clips each
  client's model update to clip_norm, sums, adds N(0, (sigma C)^2) once to the sum, and divides by
  the expected count q N. The accountant is DP-SGD's with clients in place of examples and rounds
  in place of steps. The strategy (strategies/federated.py) does the clipping and the sum; this
  class owns the sampling, the noise and the budget.
  """

  name = "dpfedavg"
  unit = "client"

  def __init__(self, config, num_clients: int, shards: int = 1):
    super().__init__(config, num_clients, shards,
                     batch_size=config.federated.clients_per_round)
    self.method = "per-client update"

  def grad_fn(self, task, expected_examples: float, sample_batch=None):
    raise NotImplementedError("DP-FedAvg clips client updates, not per-example gradients")


def build(config, num_train: int, shards: int = 1) -> DPSGD | None:
  """The mechanism `config.privacy.mechanism` names, for a training set of `num_train`."""
  cls = PRIVACY.get(config.privacy.mechanism)
  return None if cls is None else cls(config, num_train, shards)


__all__ = ["DPSGD", "build", "privacy_config", "accounting", "clipping", "noise", "sampling"]
