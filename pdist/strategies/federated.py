"""`federated`: federated learning — FedAvg, FedProx and SCAFFOLD with a server optimizer.

    --config.strategy=federated --config.federated.clients=100 --config.federated.clients_per_round=10

An update is a *round* (config.train.steps counts rounds): the sampled clients start from the
server's parameters, each runs `local_epochs` over its own examples (config.data.partition decides
who holds what; config.data.batch_size is the local batch) with plain SGD (client_lr,
client_momentum), and uploads its model change delta_i. The server averages the surviving
clients' changes weighted by their example counts and hands -average to its optimizer,
config.optim: sgd with learning_rate 1 is FedAvg (McMahan et al. 2017), sgd with momentum FedAvgM,
adam / yogi FedOpt (Reddi et al. 2021).

- fedprox (Li et al. 2020): each local step adds prox_mu (w - w_server) to the gradient.
- scaffold (Karimireddy et al. 2020, option II): control variates c (server) and c_i (one per
  client, kept in the state for every client) correct each local gradient by c - c_i; after its
  steps a client sets c_i+ = c_i - c + (w_server - w_i) / (K_i client_lr) with K_i its number of
  steps, and the server adds sum(c_i+ - c_i) / clients to c.
- dpfedavg (config.privacy.mechanism, McMahan et al. 2018): clients are Poisson sampled, each
  update is clipped to config.privacy.clip_norm, the sum gets Gaussian noise once and is divided by
  the expected number of clients; epsilon per client is in every row (privacy/).
- secure aggregation (config.federated.secure_aggregation): the server sees only the sum of the
  uploads (federated/secagg.py); that round's sum is quantised to fixed point.

Shapes: a round is one compiled function of [slots] client ids. Each client's examples are a row
of a padded [clients, largest] index table; its local batches are an in-compiled-code shuffle of
that row per epoch, padded to the largest client's number of steps with masked (no-op) steps. The
clients run vmapped (or in vmapped groups of `client_group`, lax.map), their local epochs a
`lax.scan`. Without secure aggregation a whole chunk of rounds is one `lax.scan`; with it each
round's uploads come to the host for the protocol and the server step runs after.

Each upload is one flat vector: weight_i * delta_i, then (scaffold) c_i+ - c_i, then weight_i,
so the server's whole input is a sum, which is what secure aggregation can compute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from pdist import optim
from pdist import pipeline as pipeline_lib
from pdist import privacy as privacy_lib
from pdist.errors import TrainingError
from pdist.federated import rounds
from pdist.federated import secagg as secagg_lib
from pdist.federated.secagg import SecAggError, SecureAggregation
from pdist.network import Network
from pdist.ps import sharding, timing
from pdist.registry import (PARTITIONS, STRATEGIES, ConfigError, check_choice,
                            check_positive)
from pdist.strategies import base
from pdist.tasks import Task

ALGORITHMS = ("fedavg", "fedprox", "scaffold")
DATA_SALT = 0xDA7A
SECAGG_SALT = 0x5EC       # the generator of a secure round's public choices: fold of (seed, r)
NOISE_STREAM = 0xFFFFFFFF   # fold_in data no round index reaches: DP noise keys apart from clients


class NoTraining(TrainingError):
  """Every round of the run failed: the parameters are the initial ones."""


def server_optimizer(config):
  """The server's optimizer: config.optim, except that adam / yogi take Reddi et al. 2021's form
  (optim.fedopt: adaptivity tau, no bias correction) unless config.federated.fedopt='optax'."""
  f, o = config.federated, config.optim
  if o.name not in ("adam", "yogi") or f.fedopt == "optax":
    return optim.build(config)
  tx = optim.fedopt(o.name, optim.schedule(config), tau=float(f.fedopt_tau))
  return optax.chain(optax.clip_by_global_norm(o.grad_clip), tx) if o.grad_clip > 0 else tx


def federated_config() -> ml_collections.ConfigDict:
  """config.federated: clients, the local work, the algorithm, simulated time and faults."""
  c = ml_collections.ConfigDict()
  c.clients = 100
  c.clients_per_round = 10      # sampled without replacement (DP-FedAvg without secagg: the expected number)
  c.local_epochs = 1            # passes over its own examples each sampled client makes
  c.client_lr = 0.1             # the clients' SGD; config.optim is the server's optimizer
  c.client_momentum = 0.0
  c.algorithm = "fedavg"        # fedavg / fedprox / scaffold
  c.prox_mu = 0.0               # fedprox: weight of the proximal term
  c.client_group = 0            # clients vmapped at once (0: all of a round); less memory when set
  timing.add_timing_fields(c)   # compute_time per local step, stragglers (links: config.network)
  c.deadline = 0.0              # simulated time after which late clients are dropped; 0 = none
  c.dropouts = ml_collections.ConfigDict()
  c.dropouts.rate = 0.0         # probability that a sampled client drops out mid-round
  c.dropouts.at = ()            # ((round, client), ...) scripted dropouts
  c.dropouts.after_upload = 0.0  # share of dropping clients that leave after their upload
  c.secure_aggregation = False
  c.secagg = ml_collections.ConfigDict()
  c.secagg.graph = "complete"   # complete (SecAgg) / harary (SecAgg+: O(log n) neighbours each)
  c.secagg.threshold = 0        # complete: t of Shamir's t-of-n; 0: a majority of clients_per_round
  c.secagg.gamma = 0.05         # harary: the share of corrupt clients tolerated
  c.secagg.delta = 0.05         # harary: the share of dropping clients tolerated
  c.secagg.fraction_bits = 16   # fixed point: updates are scaled by 2^this
  c.secagg.on_failure = "skip"  # fewer survivors than t: skip the round, or stop the run
  c.secagg.agreement_time = 0.0  # simulated time of one X25519 key agreement (client or server)
  c.secagg.prg_time = 0.0       # simulated time per ring element of mask expanded (AES-CTR)
  c.fedopt = "reddi"            # server adam/yogi: reddi (the paper's: tau, no bias correction) / optax
  c.fedopt_tau = 1e-3           # the adaptivity tau of Reddi et al. 2021 (fedopt='reddi')
  return c


def threshold(config) -> int:
  f = config.federated
  return int(f.secagg.threshold) or f.clients_per_round // 2 + 1


def build_secagg(config, length: int, clients: int, seed: int) -> SecureAggregation:
  """The protocol config.federated.secagg describes, for uploads of `length` among up to
  `clients` a round: SecAgg on the complete graph, or SecAgg+ with degree and threshold from
  secagg.harary_parameters(clients_per_round, gamma, delta). ConfigError if none fits."""
  sa = config.federated.secagg
  if sa.graph == "complete":
    return SecureAggregation(length, clients, threshold(config), sa.fraction_bits, seed=seed)
  m = config.federated.clients_per_round
  try:
    degree, t = secagg_lib.harary_parameters(m, float(sa.gamma), float(sa.delta))
  except ValueError as e:
    raise ConfigError(f"config.federated.secagg.graph='harary' with {m} clients a round: {e}")
  return SecureAggregation(length, clients, t, sa.fraction_bits, graph="harary", degree=degree,
                           seed=seed)


def validate_federated(config) -> None:
  f = config.federated
  check_choice(config, "federated.algorithm", ALGORITHMS)
  check_choice(config, "federated.secagg.on_failure", ("skip", "stop"))
  check_choice(config, "federated.fedopt", ("reddi", "optax"))
  if not (f.fedopt_tau > 0 and np.isfinite(f.fedopt_tau)):
    raise ConfigError(f"config.federated.fedopt_tau must be positive and finite, got "
                      f"{f.fedopt_tau}")
  defaults = federated_config()
  if config.optim.name not in ("adam", "yogi") and (f.fedopt != defaults.fedopt
                                                    or f.fedopt_tau != defaults.fedopt_tau):
    raise ConfigError(f"config.federated.fedopt and fedopt_tau apply to a server optimizer "
                      f"config.optim.name='adam' or 'yogi', not '{config.optim.name}'")
  check_positive(config, "federated.clients", "federated.clients_per_round",
                 "federated.local_epochs", "federated.client_lr")
  check_positive(config, "federated.client_momentum", "federated.prox_mu", "federated.client_group",
                 "federated.deadline", "federated.dropouts.rate", allow_zero=True)
  timing.validate_timing(config, "federated", f.clients, "clients")
  if f.clients_per_round > f.clients:
    raise ConfigError(f"config.federated.clients_per_round={f.clients_per_round} is more than "
                      f"config.federated.clients={f.clients}")
  if config.data.name == "quadratic":
    raise ConfigError("config.strategy='federated' needs training examples to hand to clients; "
                      "config.data.name='quadratic' has none")
  if f.dropouts.rate > 1:
    raise ConfigError(f"config.federated.dropouts.rate must be in [0, 1], got {f.dropouts.rate}")
  if f.prox_mu and f.algorithm != "fedprox":
    raise ConfigError(f"config.federated.prox_mu={f.prox_mu} only applies to "
                      "config.federated.algorithm='fedprox'")
  if f.algorithm == "scaffold" and config.privacy.mechanism != "none":
    raise ConfigError("config.federated.algorithm='scaffold' with DP-FedAvg is not private: its "
                      "control variates carry client data that is neither clipped nor noised; "
                      "use fedavg or fedprox")
  if f.deadline > 0 and config.privacy.mechanism == "dpfedavg":
    raise ConfigError("config.federated.deadline with DP-FedAvg would drop clients by how long "
                      "their local work takes, i.e. by how much data they hold, so who takes part "
                      "would depend on private data; leave the deadline at 0 (dropouts.rate and "
                      "dropouts.at stay available)")
  if f.algorithm == "scaffold" and f.client_momentum:
    raise ConfigError("config.federated.algorithm='scaffold' uses plain local SGD (its control "
                      "variate update assumes it); leave config.federated.client_momentum at 0")
  for item in f.dropouts.at:
    if (not isinstance(item, (tuple, list)) or len(item) != 2 or item[0] < 0
        or not 0 <= int(item[1]) < f.clients):
      raise ConfigError(f"config.federated.dropouts.at entries must be (round >= 0, client in "
                        f"[0, {f.clients})), got {item!r}")
  if config.data.partition == "shared":
    raise ConfigError("config.data.partition='shared' gives clients no data of their own; use "
                      "iid, label or dirichlet")
  if not 0 <= f.dropouts.after_upload <= 1:
    raise ConfigError(f"config.federated.dropouts.after_upload must be in [0, 1], got "
                      f"{f.dropouts.after_upload}")
  if f.secure_aggregation:
    check_choice(config, "federated.secagg.graph", ("complete", "harary"))
    if not 1 <= f.secagg.fraction_bits <= 24:
      raise ConfigError(f"config.federated.secagg.fraction_bits must be in [1, 24], got "
                        f"{f.secagg.fraction_bits}")
    check_positive(config, "federated.secagg.agreement_time", "federated.secagg.prg_time",
                   allow_zero=True)
    if f.secagg.graph == "harary":
      if f.secagg.threshold:
        raise ConfigError("config.federated.secagg.threshold applies to graph='complete'; "
                          "SecAgg+ (graph='harary') derives its threshold per neighbourhood from "
                          "secagg.gamma and secagg.delta")
      build_secagg(config, 1, f.clients_per_round, 0)   # raises if no graph fits
      return
    t = threshold(config)
    if t > f.clients_per_round or t <= f.clients_per_round // 2:
      raise ConfigError(f"config.federated.secagg.threshold={t} must be a majority of "
                        f"config.federated.clients_per_round={f.clients_per_round} and at most "
                        f"it: in ({f.clients_per_round // 2}, {f.clients_per_round}]")
  elif f.secagg.to_dict() != federated_config().secagg.to_dict():
    raise ConfigError("config.federated.secagg.* applies only with "
                      "config.federated.secure_aggregation=True")


def client_partition(config, dataset) -> list[np.ndarray]:
  """Each client's example indices under config.data.partition; every client has at least one."""
  f = config.federated
  if f.clients > dataset.num_train:
    raise ConfigError(f"config.federated.clients={f.clients} is more than the training set's "
                      f"{dataset.num_train} examples: some clients would hold none")
  parts = PARTITIONS.get(config.data.partition)(dataset, f.clients, config.train.seed, config.data)
  empty = [i for i, p in enumerate(parts) if len(p) == 0]
  if empty:
    raise ConfigError(f"config.data.partition='{config.data.partition}' leaves {len(empty)} of "
                      f"{f.clients} clients without examples (e.g. client {empty[0]}); use fewer "
                      "clients or another partition")
  return parts


@STRATEGIES.register("federated", config=federated_config, validate=validate_federated,
                     reads=("network.latency", "network.bandwidth"))
class Federated(base.Strategy):

  def __init__(self, config, task: Task, pipeline: pipeline_lib.Pipeline | None = None):
    if pipeline is not None and not pipeline.local_is_identity:
      raise ConfigError("config.strategy='federated' takes no gradient pipeline")
    f = config.federated
    self.task, self.fed = task, f
    self.network = Network(config.network)   # prices downloads, uploads and secagg's messages
    self.N, self.seed = f.clients, config.train.seed
    self.algorithm, self.mu = f.algorithm, float(f.prox_mu)
    self.tx = server_optimizer(config)
    self.client_tx = optax.sgd(f.client_lr, momentum=f.client_momentum or None)
    parts = client_partition(config, task.dataset)
    self.sizes = np.array([len(p) for p in parts], np.int32)
    largest = int(self.sizes.max())
    self.batch = min(config.data.batch_size, largest)
    self.steps_per_epoch = -(-largest // self.batch)
    table = np.zeros((self.N, self.steps_per_epoch * self.batch), np.int32)
    for i, p in enumerate(parts):
      table[i, :len(p)] = p
    arrays = base.training_arrays(task)
    self.data = jax.device_put(arrays)
    self.table, self.device_sizes = jax.device_put(table), jax.device_put(self.sizes)
    abstract = jax.eval_shape(task.init, jax.random.PRNGKey(0))
    _, self.unravel = ravel_pytree(jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract))
    self.D = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(abstract))
    self.scaffold = f.algorithm == "scaffold"
    self.L = self.D * (2 if self.scaffold else 1) + 1      # an upload's length
    model_bytes = sharding.tree_bytes(abstract)
    self.bytes_down = model_bytes * (2 if self.scaffold else 1)
    self.bytes_up = model_bytes * (2 if self.scaffold else 1)
    # user-level differential privacy (fixed-size sampling under secure aggregation: see
    # privacy.DPFedAvg for why)
    self.privacy = privacy_lib.build(config, self.N, update_size=self.D)
    cap = self.privacy.cap if self.privacy is not None else None
    # N(0, (sigma C / expected clients)^2) on the average: DPSGD.noise, clients for examples
    self.noise = self.privacy.noise() if self.privacy is not None else None
    self.secagg = None
    if f.secure_aggregation:
      self.secagg = build_secagg(config, self.L, cap or f.clients_per_round, self.seed)
      self.on_failure = f.secagg.on_failure
    # under DP there is no deadline (validate_federated): dropouts depend on public randomness
    # and client ids only, never on how much data a client holds
    self.planner = rounds.RoundPlanner(f, self.network, self.sizes, self.batch, self.seed,
                                       self.bytes_down, self.bytes_up, poisson_cap=cap)
    self.totals = self._zero_totals()
    self._chunk = jax.jit(self._run_chunk, donate_argnums=(0,))
    self._clients_fn = jax.jit(self._clients)
    self._server_fn = jax.jit(self._server, donate_argnums=(0,))

  def _zero_totals(self) -> dict:
    out = {"sim_time": 0.0, "clients_sampled": 0, "clients_dropped": 0, "bytes_uploaded": 0,
           "bytes_downloaded": 0, "rounds_failed": 0}
    if self.secagg is not None:
      out.update(secagg_failed_rounds=0, secagg_clipped=0, secagg_client_seconds=0.0,
                 secagg_server_seconds=0.0, secagg_sim_time=0.0, secagg_bytes_up=0,
                 secagg_bytes_down=0)
    return out

  # -- state ----------------------------------------------------------------------------------------
  def init(self, rng):
    init_key, step_key = base.init_keys(rng)
    params = self.task.init(init_key)
    state = {"step": jnp.zeros((), jnp.int32), "params": params,
             "opt_state": self.tx.init(params), "step_key": step_key}
    if self.scaffold:
      state["control"] = jnp.zeros((self.D,), jnp.float32)
      state["client_control"] = jnp.zeros((self.N, self.D), jnp.float32)
    return jax.device_put(state)

  def host_state(self) -> dict:
    return {"totals": dict(self.totals)}

  def load_host_state(self, d: dict) -> None:
    self.totals = {**self._zero_totals(), **d.get("totals", {})}

  def examples_per_update(self, config) -> int:
    return int(round(self.fed.clients_per_round * self.sizes.mean() * self.fed.local_epochs))

  # -- one client's local training ------------------------------------------------------------------
  def _positions(self, key, size):
    """[steps, batch] positions into the client's row of the table, and their mask: one fresh
    shuffle of its `size` examples per local epoch, padding (masked) after them."""
    width = self.steps_per_epoch * self.batch

    def epoch(e):
      u = jax.random.uniform(jax.random.fold_in(key, e), (width,))
      order = jnp.argsort(jnp.where(jnp.arange(width) < size, u, 2.0))
      mask = (jnp.arange(width) < size).astype(jnp.float32)
      return order.reshape(-1, self.batch), mask.reshape(-1, self.batch)

    pos, mask = jax.vmap(epoch)(jnp.arange(self.fed.local_epochs))
    return pos.reshape(-1, self.batch), mask.reshape(-1, self.batch)

  def _client(self, params, control, cid, ci, key):
    """One client's local epochs from the server's `params`: (upload pieces, metrics sums)."""
    size = self.device_sizes[jnp.minimum(cid, self.N - 1)]
    pos, mask = self._positions(jax.random.fold_in(key, DATA_SALT), size)
    rows = self.table[jnp.minimum(cid, self.N - 1)]
    value_and_grad = jax.value_and_grad(self.task.loss, has_aux=True)
    correction = None if control is None else self.unravel(control - ci)

    def step(carry, xs):
      w, opt_state, taken = carry
      p, m, s = xs
      batch = {**base.gather_batch(self.data, rows[p]), "mask": m}
      (loss, aux), g = value_and_grad(w, batch, jax.random.fold_in(key, s))
      if self.mu:
        g = jax.tree.map(lambda gi, wi, w0: gi + self.mu * (wi - w0), g, w, params)
      if correction is not None:
        g = jax.tree.map(jnp.add, g, correction)
      updates, new_opt = self.client_tx.update(g, opt_state, w)
      real = m.sum() > 0
      keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(real, a, b), new, old)
      w = keep(optax.apply_updates(w, updates), w)
      n = m.sum()
      sums = {"loss": jnp.where(real, loss, 0.0) * n,
              **{k: jnp.where(real, v, 0.0) * n for k, v in aux.items()}}
      return (w, keep(new_opt, opt_state), taken + real), sums

    init = (params, self.client_tx.init(params), jnp.zeros((), jnp.int32))
    (w, _, taken), sums = jax.lax.scan(step, init, (pos, mask, jnp.arange(len(pos))))
    delta = ravel_pytree(w)[0] - ravel_pytree(params)[0]
    metric_sums = {**jax.tree.map(jnp.sum, sums), "examples": mask.sum()}
    new_ci = None
    if control is not None:
      new_ci = ci - control - delta / (jnp.maximum(taken, 1) * self.fed.client_lr)
    return delta, new_ci, metric_sums

  def _clients(self, state, ids, sampled):
    """Every slot's client trained: (uploads [slots, L], new client controls, metric sums)."""
    params = state["params"]
    key = jax.random.fold_in(state["step_key"], state["step"])
    control = state.get("control")
    ci = (state["client_control"].at[ids].get(mode="fill", fill_value=0.0)
          if self.scaffold else jnp.zeros((len(ids), 0)))

    def one(args):
      cid, ci_row = args
      return self._client(params, control, cid, ci_row if self.scaffold else None,
                          jax.random.fold_in(key, cid))

    group = self.fed.client_group
    if group and group < len(ids):    # groups of `group` vmapped clients, one group after another
      delta, new_ci, sums = jax.lax.map(one, (ids, ci), batch_size=group)
    else:
      delta, new_ci, sums = jax.vmap(one)((ids, ci))
    if self.privacy is not None:      # DP-FedAvg: clip each client's change, weigh clients alike
      # a non-finite change (a client whose local training diverged) counts as no change: one
      # client must not be able to stop the run or poison the sum (sensitivity stays C)
      delta = jnp.where(jnp.all(jnp.isfinite(delta), axis=1, keepdims=True), delta, 0.0)
      norm = jnp.linalg.norm(delta, axis=1, keepdims=True)
      delta = delta * jnp.minimum(1.0, self.privacy.clip_norm / jnp.maximum(norm, 1e-12))
      weight = jnp.ones(len(ids), jnp.float32)
    else:
      # example counts over the largest client's: the server divides by the weights' sum, so the
      # scale cancels, and uploads stay small enough for secure aggregation's fixed point
      weight = (self.device_sizes.at[ids].get(mode="fill", fill_value=0).astype(jnp.float32)
                / float(self.sizes.max()))
    weight = weight * sampled
    pieces = [delta * weight[:, None]]
    if self.scaffold:
      pieces.append(new_ci - ci)
    uploads = jnp.concatenate(pieces + [weight[:, None]], axis=1)
    ex = sums.pop("examples") * sampled
    metrics = {k: (v * sampled).sum() / jnp.maximum(ex.sum(), 1.0) for k, v in sums.items()}
    return uploads, new_ci, metrics

  def _server(self, state, total, ids, survived, new_ci):
    """The server's step from the sum of the surviving uploads `total` [L]."""
    weight = total[-1]
    if self.privacy is not None:      # the noisy sum over the expected number of clients
      avg = total[:self.D] / self.privacy.batch_size
      # a key no client's can equal: client keys fold the round in first, this folds 2^32 - 1
      key = jax.random.fold_in(jax.random.fold_in(state["step_key"], NOISE_STREAM), state["step"])
      avg_tree, _, _ = self.noise.update(self.unravel(avg), (), None, key)
    else:
      avg_tree = self.unravel(total[:self.D] / jnp.maximum(weight, 1e-12))
    pseudo_grad = jax.tree.map(jnp.negative, avg_tree)
    params, opt_state = optim.apply_gradient(self.tx, state["params"], state["opt_state"],
                                             pseudo_grad)
    # nobody's upload arrived: the round changes nothing — except under DP, where every round
    # releases its noisy update (whether a round is empty must not reveal who took part)
    moved = (weight > 0) if self.privacy is None else jnp.bool_(True)
    keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(moved, a, b), new, old)
    new = dict(state, step=state["step"] + 1, params=keep(params, state["params"]),
               opt_state=keep(opt_state, state["opt_state"]))
    if self.scaffold:
      new["control"] = state["control"] + total[self.D:2 * self.D] / self.N
      old_ci = state["client_control"].at[ids].get(mode="fill", fill_value=0.0)
      rows = jnp.where(survived[:, None], new_ci, old_ci)
      new["client_control"] = state["client_control"].at[ids].set(rows, mode="drop")
    return new

  def _round(self, state, ids, sampled, survived):
    uploads, new_ci, metrics = self._clients(state, ids, sampled)
    total = (uploads * survived[:, None]).sum(axis=0)
    return self._server(state, total, ids, survived, new_ci), metrics

  def _run_chunk(self, state, ids, sampled, survived):
    def body(state, xs):
      return self._round(state, *xs)
    state, per_round = jax.lax.scan(body, state, (ids, sampled, survived))
    return state, base.mean_metrics(per_round)

  # -- the host side ------------------------------------------------------------------------------
  def _account(self, plan: rounds.Plan) -> None:
    t = self.totals
    if self.secagg is None:   # a round no upload reached changed nothing (under DP: noise only)
      t["rounds_failed"] += int((plan.survived.sum(axis=1) == 0).sum())
    t["sim_time"] += float(plan.duration.sum())
    t["clients_sampled"] += int(plan.sampled.sum())
    t["clients_dropped"] += int((plan.sampled & (plan.phase != secagg_lib.COMPLETED)).sum())
    t["bytes_downloaded"] += int(plan.sampled.sum()) * self.bytes_down
    t["bytes_uploaded"] += int(plan.survived.sum()) * self.bytes_up

  def dispatch(self, state, num_updates: int, step: int | None = None):
    step = self.step(state) if step is None else step
    plan = self.planner.plan(step, num_updates)
    if self.secagg is None:
      state, metrics = self._chunk(state, plan.clients, plan.sampled.astype(np.float32),
                                   plan.survived)
      self._account(plan)
      return state, (metrics, step + num_updates, dict(self.totals))
    rows = []
    for i in range(num_updates):
      state, row = self._secure_round(state, step + i, plan.clients[i], plan.sampled[i],
                                      plan.phase[i])
      rows.append(row)
    self._account(plan)
    metrics = {k: np.mean([r[k] for r in rows]) for k in rows[0]}
    return state, (metrics, step + num_updates, dict(self.totals))

  def _secure_round(self, state, r, ids, sampled, phase):
    """Round r, whose sum is computed by secure aggregation on the host; every client of the
    round in its dropout phase (rounds.Plan.phase: secagg's codes)."""
    uploads, new_ci, metrics = self._clients_fn(state, ids, sampled.astype(np.float32))
    uploads = np.asarray(uploads)[sampled]
    encoded, clipped = self.secagg.encode(uploads)
    survived = phase >= secagg_lib.UPLOADED_THEN_DROPPED
    # which t answers the server unmasks from, SecAgg+'s graph: public randomness of (seed, r)
    rng = np.random.default_rng([self.seed, r, SECAGG_SALT])
    try:
      total = self.secagg.decode(self.secagg.sum(encoded, phase[sampled], rng))
    except SecAggError as e:
      if self.on_failure == "stop":
        raise SecAggError(f"round {r}: {e} (config.federated.secagg.on_failure="
                          "'stop')") from None
      self.totals["secagg_failed_rounds"] += 1
      self.totals["rounds_failed"] += 1
      total = np.zeros(self.L)
      survived = np.zeros_like(survived)
    finally:
      self._account_protocol(self.secagg.last_cost)
    self.totals["secagg_clipped"] += clipped
    state = self._server_fn(state, jnp.asarray(total, jnp.float32), ids, survived, new_ci)
    return state, metrics

  def _account_protocol(self, cost) -> None:
    """The protocol's messages and work in the round's simulated time: each of its messages
    (keys up, keys down, shares up, shares down, the survivor list down, unmasking shares up;
    the masked input is the round's upload, already timed) costs one message of its largest
    client's bytes on config.network (latency + bytes / bandwidth); the work is the busiest
    client's plus the server's, at secagg.agreement_time per X25519 agreement and
    secagg.prg_time per mask element."""
    if cost is None:
      return
    f, t = self.fed, self.totals
    messages = [cost.bytes_up[:, 0], cost.bytes_down[:, 1], cost.bytes_up[:, 1],
                cost.bytes_down[:, 2], cost.bytes_down[:, 3], cost.bytes_up[:, 3]]
    network = sum(self.network.message(float(b.max()))
                  for b in messages if len(b) and b.max() > 0)
    at, pt = float(f.secagg.agreement_time), float(f.secagg.prg_time)
    work = (float((cost.client_key_agreements * at + cost.client_prg_elements * pt).max(initial=0))
            + cost.server_key_agreements * at + cost.server_prg_elements * pt)
    t["secagg_sim_time"] += network + work
    t["sim_time"] += network + work
    t["secagg_bytes_up"] += int(cost.bytes_up.sum() - cost.bytes_up[:, 2].sum())
    t["secagg_bytes_down"] += int(cost.bytes_down.sum())
    t["secagg_client_seconds"] += cost.client_seconds
    t["secagg_server_seconds"] += cost.server_seconds

  def run(self, state, num_updates: int):
    state, pending = self.dispatch(state, num_updates)
    return state, self.collect(pending)

  def collect(self, pending):
    metrics, step, totals = pending
    out = base.to_host(metrics)
    out.update(totals)
    if self.privacy is not None:
      out.update(self.privacy.row_metrics(step))
    return out

  def check_finished(self, state) -> None:
    if self.privacy is not None and not self.privacy.fixed_size:
      return    # under Poisson sampling how many rounds were empty depends on who was drawn
    step = self.step(state)
    if step and self.totals["rounds_failed"] >= step:
      raise NoTraining(f"all {step} rounds failed ({self._failure_cause()}): the parameters never "
                       "took a client's update")

  def _failure_cause(self) -> str:
    f = self.fed
    if self.secagg is not None:
      if self.secagg.graph == "harary":
        return (f"a neighbourhood had fewer than SecAgg+'s threshold {self.secagg.threshold} of "
                f"its {self.secagg.degree + 1} clients answering; lower "
                "config.federated.dropouts.rate or raise config.federated.secagg.delta")
      return (f"fewer than the secure-aggregation threshold {self.secagg.threshold} of the "
              f"{f.clients_per_round} clients a round survived; lower "
              "config.federated.dropouts.rate or config.federated.secagg.threshold")
    return ("no client's upload reached the server; lower config.federated.dropouts.rate"
            + (" or raise config.federated.deadline" if f.deadline > 0 else ""))

  def public_row_keys(self) -> tuple[str, ...]:
    """Under DP-FedAvg with fixed-size sampling (secure aggregation) who took part and who
    dropped out are independent of the clients' data, so the round bookkeeping is public; under
    Poisson sampling the number of clients drawn is not."""
    if self.privacy is not None and self.privacy.fixed_size:
      # not sim_time (clients' work depends on their data) nor secagg_clipped (coordinates of
      # private updates beyond the fixed-point range)
      private = {"sim_time", "secagg_clipped"}
      return tuple(k for k in self._zero_totals() if k not in private)
    return ()

  def describe(self, state) -> dict:
    out = {"federated": {"clients": self.N, "client_sizes": [int(self.sizes.min()),
                                                            int(self.sizes.max())],
                         "local_steps_padded": self.fed.local_epochs * self.steps_per_epoch}}
    if self.privacy is not None:    # the clients' sizes are their data: not released under DP
      out["federated"] = {"clients": self.N}
      out["privacy"] = self.privacy.describe(self.step(state))
    return out
