"""A 100M-parameter byte-level Transformer on the named mesh: ZeRO-3 x tensor parallelism.

  python -m pdist --local_devices 8 --config experiments/lm_large.py --workdir runs/lm_large
  python -m pdist --local_devices 8 --config experiments/lm_large.py:data --workdir runs/lm_large_dp

experiments/charlm.py's model scaled up: 8 blocks of width 1024 (16 heads, 4096-wide MLP),
context 128 bytes, tied byte embeddings: 100.9M parameters, 404 MB in float32 and 1.2 GB with
Adam's two moments. On 8 devices as data 1 x fsdp 4 x tensor 2 with ZeRO-3 each device holds
about an eighth of the parameters and of the optimizer state (summary.json's `memory`); the
blocks are rematerialised (model.remat=block). A few updates of batch 8: on this 2-core CPU's 8
emulated devices each takes tens of seconds, so the run is 4 updates and no evaluation; on an
accelerator it is the speed workload (benchmarks/sharded.py). The final evaluation reads the
first 64 validation windows (data.num_test).
Presets: tiny (width 64, 2 blocks); fsdp8 (data 1 x fsdp 8, ZeRO-3); tensor8; zero1, zero2 (fsdp
4 x tensor 2 at that stage); data (replicated data parallelism: 8 copies of everything);
pipeline (2 stages of 4 blocks x fsdp 4 with ZeRO-3, 2 micro-batches on the GPipe schedule).
"""

from pdist.config import apply_presets, base_config


def _tiny(c):
  c.model.width, c.model.layers, c.model.heads = 64, 2, 4
  c.data.seq_len = 32


def _mesh(data, fsdp, tensor, zero, pipeline=1, microbatches=0):
  def preset(c):
    c.sync.mesh.data, c.sync.mesh.fsdp, c.sync.mesh.tensor = data, fsdp, tensor
    c.sync.mesh.pipeline, c.sync.microbatches = pipeline, microbatches
    c.sync.zero = zero
  return preset


PRESETS = {"tiny": _tiny, "fsdp8": _mesh(1, 8, 1, 3), "tensor8": _mesh(1, 1, 8, 0),
           "zero1": _mesh(1, 4, 2, 1), "zero2": _mesh(1, 4, 2, 2), "data": _mesh(0, 1, 1, 0),
           "pipeline": _mesh(1, 4, 1, 3, pipeline=2, microbatches=2)}


def get_config(arg=None):
  c = base_config()
  c.strategy = "sync"
  c.data.name = "numpy_docs"
  c.data.seq_len = 128
  c.data.batch_size = 8
  c.data.num_test = 64        # the final evaluation on the first 64 validation windows
  c.model.name = "transformer"
  c.model.width, c.model.layers, c.model.heads = 1024, 8, 16
  c.model.remat = "block"
  c.optim.name = "adam"
  c.optim.learning_rate = 3e-4
  c.sync.mesh.data, c.sync.mesh.fsdp, c.sync.mesh.tensor = 1, 4, 2
  c.sync.zero = 3
  c.train.steps, c.train.log_every, c.train.eval_every = 4, 1, 0
  c.checkpoint.every = 0
  return apply_presets(c, arg, PRESETS, "lm_large")
