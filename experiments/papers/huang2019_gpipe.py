"""Huang, Cheng, Bapna, Firat, Chen, Chen, Lee, Ngiam, Le, Wu & Chen, "GPipe: Efficient Training
of Giant Neural Networks using Pipeline Parallelism" (NeurIPS 2019; arXiv:1811.06965).

The claims (Sec. 2.2-2.3): a network of L layers is partitioned into K cells, cell k placed on
accelerator k; a mini-batch of N examples is split into M micro-batches pipelined through the K
accelerators, the gradients of the M micro-batches accumulated and applied once at the end of
the mini-batch, so "the gradient updates using GPipe are consistent regardless of the number of
partitions" (synchronous mini-batch SGD, whatever K and M); the idle time of each accelerator,
the bubble, is O((K - 1) / (M + K - 1)) of the step ("amortized over the number of
micro-steps M"), which the paper finds negligible for M >= 4 K.

pdist's test (strategy `sync`, config.sync.mesh.pipeline = K, config.sync.microbatches = M;
pdist/parallel/stages.py): experiments/charlm.py's byte-level Transformer at 4 blocks of width 32
(the `tiny` preset's data), plain SGD (lr 0.1), batch 32, 20 updates, on 8 CPU devices as
pipeline 4 x data 2, for M = 1, 4 and 16, against `single` on the same batches: the largest
difference of any parameter, over the largest change training made to any parameter
(float32 sums in another order: ~1e-6; a micro-batch missed, doubled or sent to the wrong stage
moves it by > 1e-2). The bubble: the idle slots of the schedule table the step runs
(`stages.schedule`; tests/test_sharded.py checks that gpipe executes it), against the paper's
(K - 1) / (M + K - 1) for K = 2, 4, 8 and M = 1 ... 32. The partition: the block parameter bytes
on one device, times K, over all blocks' bytes (each accelerator holds one cell). Scaled: 4 blocks
of width 32 on emulated CPU devices for the paper's 6-billion-parameter Transformer and
AmoebaNet on TPUs; the seeds change the initial parameters and the batches. The paper's
throughput figures (speedups with K) are not reproduced: emulated devices share two cores.

Result (first full run, 3.0 minutes): the pipelined runs' parameters differ from single-device
SGD's by at most 4.1e-7 +- 0.9e-7 of the change training made (worst M of 1, 4, 16); the schedule's
idle fraction equals (K - 1) / (M + K - 1) on the whole grid; a device holds exactly 1/K of the
blocks: pass, pass, pass.

  python -m pdist.reproduce --only huang2019_gpipe
"""

import os

PAPER = "Huang et al. 2019, GPipe: pipelined micro-batches train as synchronous SGD, bubble (K-1)/(M+K-1)"
SEEDS = 3
K = 4
MICROBATCHES = (1, 4, 16)
CLAIMS = [
    {"name": "same_updates", "claim": "pipeline 4 x data 2 trains the parameters single-device "
     "SGD trains, for M = 1, 4, 16 (worst M)",
     "metric": "max |theta_pipeline - theta_single| / max |theta_single - theta_0|",
     "low": 0.0, "high": 1e-4,
     "published": "\"consistent regardless of the number of partitions\" (Sec. 2.2)"},
    {"name": "bubble", "claim": "the schedule's idle fraction is (K - 1) / (M + K - 1) "
     "(K = 2, 4, 8; M = 1..32; worst case)",
     "metric": "max |idle fraction - (K - 1) / (M + K - 1)|", "low": 0.0, "high": 1e-12,
     "published": "O((K - 1) / (M + K - 1)) (Sec. 2.3)"},
    {"name": "partition", "claim": "each of the K devices of a data shard holds 1/K of the "
     "blocks' parameters", "metric": "block bytes on one device x K / all blocks' bytes",
     "low": 0.999, "high": 1.001, "published": "K cells, one an accelerator (Sec. 2.2)"},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  import jax
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from pdist import data, tasks
  from pdist.parallel import layout, stages

  spec = os.path.join(root, "experiments", "charlm.py") + ":tiny"
  steps = 6 if tiny else 20   # tiny: past the preset's 5 warm-up steps

  def config(seed, strategy, fields=()):
    return config_lib.load(spec, [
        f"--config.strategy={strategy}", "--config.model.width=32", "--config.model.heads=4",
        "--config.model.layers=4", "--config.optim.name=sgd", "--config.optim.learning_rate=0.1",
        "--config.optim.weight_decay=0.0", "--config.data.batch_size=32",
        f"--config.train.steps={steps}", f"--config.train.log_every={steps}",
        "--config.train.eval_every=0", f"--config.train.seed={seed}",
        "--config.train.progress=False", "--config.train.tensorboard=False",
        "--config.checkpoint.every=0", *fields])

  same, partition, diffs = [], [], {}
  micros = MICROBATCHES[:2] if tiny else MICROBATCHES
  for seed in range(1 if tiny else SEEDS):
    ref = train.run(config(seed, "single"), os.path.join(workdir, f"single_{seed}"))
    # the parameters before training: the task's init at the run's key (pdist.train's)
    c = config(seed, "single")
    init = tasks.build(c, data.load(c.data)).init(jax.random.PRNGKey(seed))
    moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(init)))
    worst = 0.0
    for m in micros:
      got = train.run(config(seed, "sync", [f"--config.sync.mesh.pipeline={K}",
                                            f"--config.sync.microbatches={m}"]),
                      os.path.join(workdir, f"pipeline_{seed}_{m}"))
      d = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)))
      diffs[(seed, m)] = d / moved
      worst = max(worst, d / moved)
      if m == micros[-1]:
        blocks = got.state["params"][layout.STACKED]
        on_one = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(blocks))
        partition.append(on_one * K / sum(x.nbytes for x in jax.tree.leaves(blocks)))
    same.append(worst)

  grid = [(k, m) for k in (2, 4, 8) for m in range(1, 33)]
  idle = {(k, m): stages.bubble(stages.schedule(k, m)) for k, m in grid}
  gap = max(abs(idle[k, m] - (k - 1) / (m + k - 1)) for k, m in grid)
  n = len(same)

  os.makedirs(workdir, exist_ok=True)
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
  ms = np.arange(1, 33)
  for i, k in enumerate((2, 4, 8)):
    ax.plot(ms, (k - 1) / (ms + k - 1), color=f"C{i}", lw=1,
            label=f"K = {k}: paper, (K-1)/(M+K-1)")
    ax.plot(ms[::3], [idle[k, m] for m in ms[::3]], "o", color=f"C{i}", ms=4,
            label=f"K = {k}: pdist's schedule")
    ax.axvline(4 * k, color=f"C{i}", ls=":", lw=1)
  ax.set(xlabel="micro-batches M (dotted: M = 4K)", ylabel="idle fraction of each device",
         title="the bubble")
  ax.legend(fontsize=7)
  for seed in range(n):
    bx.plot([str(m) for m in micros], [diffs[(seed, m)] for m in micros], "o-",
            label=f"seed {seed}")
  bx.axhline(1e-4, color="k", ls="--", lw=1, label="accepted (float rounding)")
  bx.set_yscale("log")
  bx.set(xlabel=f"micro-batches M (pipeline {K} x data 2)",
         ylabel="max |theta - theta_single| / max |theta_single - theta_0|",
         title=f"Transformer, {steps} SGD updates: same as single-device SGD")
  bx.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(os.path.join(workdir, "figure.png"), dpi=100)
  plt.close(fig)
  return {"same_updates": same, "bubble": [gap] * n, "partition": partition}
