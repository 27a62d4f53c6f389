"""Communication compression on a bandwidth-limited parameter server, with and without error feedback.

Accuracy against bytes sent and against simulated time, for each compressor.

  python -m pdist --config experiments/compression.py:topk --workdir runs/comp_topk
  python -m pdist.sweep --config experiments/compression.py --workdir runs/compression
  # runs/compression/curves_bytes_pushed.png and curves_sim_time.png; ~1 minute on 2 CPU cores

MNIST-1D, MLP (256, 256) (77k parameters, 309 kB dense), `ps` bsp with 4 workers on shared
batches of 32, SGD momentum 0.9 lr 0.05, 600 updates. Each link carries 300 kB per time unit,
so a dense push or pull takes ~1 unit beside 1 unit of compute: compressing the pushes (pulls
stay dense) cuts a round from ~3 units to a little over 2. Measured numbers are in the README.
Presets: tiny (in any position: it always applies last); one per compressor (int8, qsgd, topk,
randomk, sign, powersgd); noef (error feedback off); leaf (topk / randomk choose k in each leaf
instead of over the whole gradient, e.g. `:randomk,leaf`); noef and leaf without a compressor
apply to topk. The sweep has top-k with both scopes.
"""

from pdist.config import apply_presets, base_config, tiny


def _compressor(name, **fields):
  def preset(c):
    c.compression.name = name
    for key, value in fields.items():
      c.compression[key] = value
  return preset


def _noef(c):
  c.compression.name = c.compression.name if c.compression.name != "none" else "topk"
  c.compression.error_feedback = False


def _leaf(c):
  c.compression.name = c.compression.name if c.compression.name != "none" else "topk"
  c.compression.scope = "leaf"


PRESETS = {"tiny": lambda c: tiny(c, steps=20, log_every=10, eval_every=10), "noef": _noef,
           "leaf": _leaf,
           "int8": _compressor("int8", error_feedback=False),
           "qsgd": _compressor("qsgd", error_feedback=False),
           "topk": _compressor("topk"), "randomk": _compressor("randomk"),
           "sign": _compressor("sign"), "powersgd": _compressor("powersgd")}


def get_config(arg=None):
  c = base_config()
  c.strategy = "ps"
  c.data.name = "mnist1d"
  c.data.batch_size = 32
  c.data.partition = "shared"
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.name = "sgd"
  c.optim.momentum = 0.9
  c.optim.learning_rate = 0.05
  c.ps.workers = 4
  c.ps.consistency = "bsp"
  c.network.bandwidth = 3e5
  c.train.steps = 600
  c.train.log_every = 25
  c.train.eval_every = 100
  return apply_presets(c, arg, PRESETS, "compression")


def get_hyper(arg=None):
  """Every compressor with its usual error-feedback setting, and the biased ones without it;
  top-k over the whole gradient (the default scope) and in each leaf."""
  del arg
  out = [("none", {"compression.name": "none"}),
         ("int8", {"compression.name": "int8", "compression.error_feedback": False}),
         ("qsgd16", {"compression.name": "qsgd", "compression.error_feedback": False})]
  for name, extra in (("topk", {"compression.ratio": 0.01}),
                      ("randomk", {"compression.ratio": 0.01}), ("sign", {}),
                      ("powersgd", {"compression.rank": 4})):
    out.append((f"{name}_ef", {"compression.name": name, **extra}))
    if name != "powersgd":
      out.append((f"{name}_noef", {"compression.name": name, "compression.error_feedback": False,
                                   **extra}))
  out.append(("topk_leaf_ef", {"compression.name": "topk", "compression.ratio": 0.01,
                               "compression.scope": "leaf"}))
  return out
