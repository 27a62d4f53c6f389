"""Differential privacy: DP-SGD (Abadi et al. 2016) with Poisson sampling and dp-accounting.

    --config.privacy.mechanism=dpsgd --config.privacy.clip_norm=1.0 \
    --config.privacy.noise_multiplier=1.1      # or --config.privacy.target_epsilon=3.0

What it guarantees: the parameters released at every step (and so everything computed from them)
are (epsilon, delta_total)-differentially private with respect to adding or removing any one
*training example*, where epsilon in each metrics row is the budget spent so far under
config.privacy.accountant (summary.json names the accountant and its conversion to (epsilon,
delta); accounting.py), and delta_total = config.privacy.delta + truncation_delta (the proved
price of cutting Poisson batches at a cap; accounting.py). It assumes Poisson sampling (each
example in each step's batch independently with probability q = batch_size / num_train). With
`sampling=shuffle` (fixed shuffled batches) there is no guarantee: rows carry
`epsilon_if_poisson` (what Poisson sampling at the same rate would give), never `epsilon`, and
summary.json says so.

Clipping and noise run in float32 whatever config.model.dtype is (a bfloat16 model's per-example
gradients are cast to float32 before their norms are taken): bfloat16 norms let a clipped gradient
exceed C, and bfloat16 noise takes a handful of values, which no Gaussian analysis covers. Float32
noise is not exactly Gaussian either: jax.random.normal's support is bounded (about +-5.4 sigma),
which every DP-SGD implementation shares and the reported delta does not include (Mironov 2012;
Jin et al. 2022 on floating-point DP).

What a run releases, and under what protection (STATISTICS below; summary.json lists it too):
- protected by epsilon: the parameters at every step and the eval metrics on the test set
  computed from them (the test set itself is not protected). The workdir as a whole is not a
  private release: config.json holds train.seed and checkpoints hold the step key, from which the
  sampling and the noise can be regenerated (see the seed below);
- not protected, and so withheld from metrics.jsonl, TensorBoard, the progress bar and
  summary.json unless config.privacy.release_train_stats=True: the training loss and accuracy on
  the private batches, `batch_fill` (the exact sampled batch size over the expected one) and
  `clipped_fraction` (the share of clipped examples). train.run's returned rows keep them for
  the caller's own process;
- not protected, and released: whether and when training diverged (a non-finite loss stops the
  run), the configuration, and timing.
Not protected either: anything derived from the training data outside training (preprocessing,
the choice of hyperparameters by looking at results, repeated runs). Each example is one unit of
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
  c.accountant = "rdp"          # rdp / rdp_classic (Abadi et al.'s conversion) / pld (tight, ~2 s a row)
  c.release_train_stats = False  # log training loss, accuracy, batch_fill, clipped_fraction (unprotected)
  return c


# Every statistic a private run's rows may carry beyond evaluation, with its status.
STATISTICS = {
    "epsilon": "the budget spent so far (public: a function of the config and the step)",
    "epsilon_if_poisson": "sampling=shuffle: what Poisson sampling would give; no guarantee",
    "loss": "training loss on the private batches: NOT protected (withheld by default)",
    "accuracy": "training accuracy on the private batches: NOT protected (withheld by default)",
    "batch_fill": "exact sampled batch size / expected: NOT protected (withheld by default)",
    "clipped_fraction": "share of clipped examples or clients: NOT protected (withheld by "
                        "default)",
    "eval_*": "metrics on the test set from the released parameters: protected as the "
              "parameters are (the test set itself is not)",
}


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
    self.release_train_stats = bool(p.release_train_stats)
    self.cap = self._cap(config, shards)
    self.accountant = self._accountant(config)
    if p.target_epsilon > 0:
      self.accountant.sigma = self.accountant.calibrate(float(p.target_epsilon),
                                                        config.train.steps)
    self.noise_multiplier = self.accountant.sigma

  def _cap(self, config, shards: int) -> int | None:
    """The Poisson batch's cap: P(overflow) <= 1e-10 delta, so that for runs of up to 10^6
    steps T x P(overflow) <= 1e-4 delta and truncation_delta stays below delta / 10 for every
    epsilon up to 6.9 (accounting.py; it is reported exactly whatever the run). It does not
    depend on train.steps, so a run extended on resume keeps its batches. None: no Poisson
    batches."""
    if config.privacy.sampling != "poisson":
      return None
    return sampling.batch_cap(self.num_train, self.q, shards, 1e-10 * self.delta)

  def _accountant(self, config) -> accounting.Accountant:
    p = config.privacy
    return accounting.Accountant(self.kind, self.q, float(p.noise_multiplier), self.delta,
                                 self.num_train, self.cap)

  @property
  def poisson(self) -> bool:
    return self.cap is not None

  # row fields that are functions of the config, the step, the released parameters or the clock
  PUBLIC = frozenset({"step", "epoch", "epsilon", "epsilon_if_poisson", "steps_per_sec",
                      "wall_time"})

  def released(self, row: dict, public=()) -> dict:
    """`row` as it may be logged: every field computed from the private data without noise (the
    training loss and accuracy, batch_fill, clipped_fraction, pipeline statistics...) taken out,
    unless config.privacy.release_train_stats. Kept: PUBLIC, `public`, and eval_* (computed from
    the released parameters on the test set)."""
    if self.release_train_stats:
      return row
    return {k: v for k, v in row.items()
            if k in self.PUBLIC or k in public or k.startswith("eval_")}

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

  @property
  def guaranteed(self) -> bool:
    """Whether the sampling is the one the accountant assumes (else epsilon is hypothetical)."""
    return self.sampling != "shuffle"

  def row_metrics(self, step: int) -> dict[str, float]:
    name = "epsilon" if self.guaranteed else "epsilon_if_poisson"
    return {name: self.accountant.epsilon(step)}

  def describe(self, step: int) -> dict:
    """What summary.json says about the guarantee after `step` updates."""
    eps = self.accountant.epsilon(step)
    truncation = self.accountant.truncation_delta(step)
    out = {"mechanism": self.name, "unit": self.unit,
           "neighbouring_relation": self.accountant.relation.replace("record", self.unit),
           "epsilon" if self.guaranteed else "epsilon_if_poisson": eps,
           "delta": self.delta, "accountant": self.kind,
           "accountant_description": self.accountant.description, "sampling": self.sampling,
           "sampling_rate": self.q, "noise_multiplier": self.noise_multiplier,
           "clip_norm": self.clip_norm, "clipping": getattr(self, "method", "vmap"),
           "statistics": dict(STATISTICS),
           "train_stats_released": self.release_train_stats}
    if not self.guaranteed:
      out["guarantee"] = ("none: fixed shuffled batches; epsilon_if_poisson is what Poisson "
                          "sampling at the same rate would give")
      return out
    delta_total = self.delta + truncation
    if self.poisson:
      out.update(batch_cap=self.cap, overflow_probability=self.accountant.overflow,
                 truncation_delta=truncation)
    out.update(delta_total=min(delta_total, 1.0), delta_covers=self.delta_covers())
    if delta_total >= 1.0:   # e.g. epsilon so large that the truncation term exceeds 1
      out["guarantee"] = (f"none: delta_total = delta + truncation_delta >= 1 at epsilon "
                          f"{eps:.4g} (add noise, or use the pld accountant)")
      return out
    out["guarantee"] = (f"({eps:.4g}, {delta_total:.3g})-DP for each {self.unit} "
                        f"({self.accountant.relation.replace('record', self.unit)}), "
                        f"accountant {self.kind}")
    return out

  def delta_covers(self) -> str:
    if not self.poisson:
      return "config.privacy.delta: the accountant's delta alone (no truncation)"
    if self.kind == "pld":
      return ("config.privacy.delta: the PLD accountant models the truncation at batch_cap "
              "exactly")
    return ("config.privacy.delta from the accountant, plus truncation_delta = (1 + e^epsilon) "
            "x steps x overflow_probability for the batches cut at batch_cap (accounting.py)")


@PRIVACY.register("dpfedavg", validate=_validate_dpfedavg)
class DPFedAvg(DPSGD):
  """User-level DP for federated learning (DP-FedAvg, McMahan et al. 2018): the record is a
  *client*. Each round samples every client independently with probability
  q = clients_per_round / clients (Poisson, padded to a cap like DP-SGD's batches; with secure
  aggregation a fixed number, see below), clips each
  client's model update to clip_norm, sums, adds N(0, (sigma C)^2) once to the sum, and divides by
  the expected count q N. The accountant is DP-SGD's with clients in place of examples and rounds
  in place of steps (add or remove one client). The strategy (strategies/federated.py) does the
  clipping and the sum; this class owns the sampling, the noise and the budget.

  With secure aggregation (config.federated.secure_aggregation) the sampling is different. There a
  round fails when fewer than the threshold t of its clients survive, and a failed round releases
  no sum. Under Poisson sampling whether a round fails depends on how many clients were drawn, so
  one client's presence could decide between "no sum" and "the sum of t clients" (a change of up
  to t C, not C). So with secure aggregation each round samples exactly m = clients_per_round
  clients without replacement, and dropouts (random, scripted, or past the deadline, with every
  client's local work taken as the largest client's) depend on client ids and public randomness
  only: whether a round fails is independent of the clients' data. The neighbouring relation is
  then *replace one client's data* (the number of clients is public), the clipped sum's
  sensitivity is 2C plus the fixed-point rounding of secure aggregation (sqrt(d) / 2^fraction_bits
  for d parameters: each coordinate of each upload is rounded by at most half a unit), and the
  accountant is dp-accounting's sampled-without-replacement Gaussian (Wang, Balle and
  Kasiviswanathan 2019) under REPLACE_ONE, at noise multiplier sigma C / sensitivity. The
  server adds the noise after unmasking: secure aggregation hides each update from the server,
  which sees the round's noiseless sum; the DP guarantee covers what is released (the model).
  A deadline is refused under DP: it would drop clients by how much data they hold.
  """

  name = "dpfedavg"
  unit = "client"

  def __init__(self, config, num_clients: int, shards: int = 1, update_size: int = 0):
    f = config.federated
    self.fixed_size = bool(f.secure_aggregation)
    self.rounding = (math.sqrt(update_size) / 2 ** int(f.secagg.fraction_bits)
                     if self.fixed_size else 0.0)
    super().__init__(config, num_clients, shards, batch_size=f.clients_per_round)
    if self.fixed_size:
      self.sampling = "fixed-size"
    self.method = "per-client update"

  def _cap(self, config, shards: int) -> int | None:
    return None if self.fixed_size else super()._cap(config, shards)

  @property
  def sensitivity(self) -> float:
    """The released sum's sensitivity under the accountant's relation, in units of C."""
    return 2.0 + self.rounding / self.clip_norm if self.fixed_size else 1.0

  def _accountant(self, config) -> accounting.Accountant:
    if not self.fixed_size:
      return super()._accountant(config)
    if self.kind == "pld":
      raise ConfigError("config.privacy.accountant='pld' cannot account DP-FedAvg with secure "
                        "aggregation (fixed-size sampling under replace-one); use 'rdp' or "
                        "'rdp_classic'")
    return accounting.Accountant(self.kind, self.q, float(config.privacy.noise_multiplier),
                                 self.delta, self.num_train, sample_size=self.batch_size,
                                 sensitivity=self.sensitivity)

  def describe(self, step: int) -> dict:
    out = super().describe(step)
    if self.fixed_size:
      out.update(sensitivity=self.sensitivity * self.clip_norm,
                 sampling_note="fixed-size sampling without replacement (secure aggregation): "
                               "whether a round fails does not depend on the clients' data")
    return out

  def grad_fn(self, task, expected_examples: float, sample_batch=None):
    raise NotImplementedError("DP-FedAvg clips client updates, not per-example gradients")


def build(config, num_train: int, shards: int = 1, **kwargs) -> DPSGD | None:
  """The mechanism `config.privacy.mechanism` names, for a training set of `num_train`."""
  cls = PRIVACY.get(config.privacy.mechanism)
  return None if cls is None else cls(config, num_train, shards, **kwargs)


__all__ = ["DPSGD", "build", "privacy_config", "accounting", "clipping", "noise", "sampling"]
