"""A byte-level Transformer language model on NumPy's documentation (offline, ~1.6 MB).

  python -m pdist --config experiments/charlm.py --workdir runs/charlm
  python -m pdist --config experiments/charlm.py:rotary --workdir runs/charlm_rotary
  python -m pdist --config experiments/charlm.py:sync --workdir runs/charlm_sync   # all devices
  python -m pdist --config experiments/charlm.py:federated --workdir runs/charlm_fed

A decoder-only Transformer (2 blocks, width 128, 4 heads, context 128 bytes, learned positions,
tied embeddings) trained with Adam (lr 3e-3, 100 warmup updates, cosine decay) on batches of 32
windows of 128 bytes from the first 90% of the corpus; validation on the last 10%. Rows carry
loss (nats per byte), bits_per_char and, at evaluations, eval_perplexity; summary.json holds the
unigram baseline (bits per byte of a context-free model) and a sample of generated text.
Presets: tiny; rotary (RoPE instead of learned positions); sync; ps (4 async workers);
federated (100 clients, each a contiguous stretch of the corpus, 10 a round).
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.data.seq_len = 32
  c.data.batch_size = 8
  c.model.width, c.model.layers, c.model.heads = 32, 1, 2
  if c.optim.warmup_steps:   # a schedule with warmup (not federated's constant one)
    c.optim.warmup_steps = 5
  c.train.steps, c.train.log_every, c.train.eval_every = 20, 10, 20
  if c.strategy == "federated":   # small clients (45 windows each), 4 a round
    c.federated.clients, c.federated.clients_per_round = 1000, 4


def _rotary(c):
  c.model.positions = "rotary"


def _sync(c):
  c.strategy = "sync"


def _ps(c):
  c.strategy = "ps"
  c.ps.workers = 4
  c.data.batch_size = 8       # per worker


def _federated(c):
  c.strategy = "federated"
  c.data.partition = "contiguous"
  c.federated.clients = 100
  c.federated.clients_per_round = 10
  c.federated.local_epochs = 1
  c.federated.client_lr = 0.5
  c.data.batch_size = 16
  c.optim.name, c.optim.learning_rate = "sgd", 1.0
  c.optim.schedule, c.optim.warmup_steps = "constant", 0
  c.train.steps = 300
  c.train.log_every, c.train.eval_every = 10, 50


PRESETS = {"tiny": _tiny, "rotary": _rotary, "sync": _sync, "ps": _ps, "federated": _federated}


def get_config(arg=None):
  c = base_config()
  c.data.name = "numpy_docs"
  c.data.seq_len = 128
  c.data.batch_size = 32
  c.model.name = "transformer"
  c.model.width, c.model.layers, c.model.heads = 128, 2, 4
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-3
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.train.steps = 1500
  c.train.log_every = 50
  c.train.eval_every = 250
  return apply_presets(c, arg, PRESETS, "charlm")
