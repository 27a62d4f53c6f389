"""Douillard, Feng, Rusu, Chhaparia, Donchev, Kuncoro, Ranzato, Szlam & Shen, "DiLoCo: Distributed
Low-Communication Training of Language Models" (2023; arXiv:2311.08105).

The claim, from the abstract: "On the widely used C4 dataset, we show that DiLoCo on 8 workers
performs as well as fully synchronous optimization while communicating 500 times less." The
numbers (Table 2, "Trade-offs of various training algorithms", C4 validation perplexity of a 150M
Transformer after 88,000 steps):

  Baseline (1 worker, batch 512)                              16.23
  Baseline, 8x batch size with data parallelism (8xN syncs)   15.30
  Baseline, 8x updates                                         14.72
  DiLoCo, 8 workers, H = 500 (8xN/H syncs)                     15.02

so DiLoCo / 8x-batch data parallelism = 15.02 / 15.30 = 0.982, with 500 times fewer
synchronisations. The paper's recipe: a decoder-only Transformer (150M: 12 layers, width 896),
sequence length 1024, batch 512 per worker; the first 24,000 of the 88,000 steps pretrained as one
synchronous model, then 64,000 steps of DiLoCo: 8 workers (non-i.i.d. shards by default; i.i.d.
gives about the same, its "Number of replicas" table: 15.08 i.i.d., 15.02 non-i.i.d.), inner AdamW,
every H = 500 inner steps the mean parameter change goes through an outer Nesterov SGD (lr 0.7,
momentum 0.9). Its ablation over H (50 to 2000) calls the loss from communicating less very
mild: H = 1000 is 2.9% worse in perplexity than H = 50. (The numbers and the table's number,
Table 2, were read from a stored copy of the paper's text.)

The acceptance range of the perplexity ratio, [0.95, 1.03], spans the paper's own numbers: from
the 8x-updates baseline's 14.72 / 15.30 = 0.96 (the best any method reached in Table 2) to the
2.9% the paper calls a mild degradation. The communication claim: at least 50x fewer
synchronisations in the DiLoCo phase ("H in the hundreds"; the paper's is 500x).

Scaled to this 2-core CPU (8 emulated devices; each run about a minute, the 6 runs about 6
minutes): experiments/diloco.py's byte-level Transformer (2 blocks, 4 heads) at width 64
(diloco.py: 128) and context 64 bytes (128) on NumPy's docstrings (1.6 MB, i.i.d. slices of one
global batch of 64 windows, 8 per replica), AdamW lr 3e-3, weight decay 0.1, 100 warmup updates,
cosine decay, 1000 updates (diloco.py: 2000; about 2.9 epochs): the first 200 synchronous (the
pretraining, config.local.sync_warmup, 20% of the run against the paper's 27%), then 800 local
updates with H = 100, i.e. 8 outer steps (the paper: 128). `sync` is the same run with every
update all-reduced (8x the per-replica batch: the paper's data-parallel baseline), same tokens.
Each replica's batch here is 512 bytes against the paper's 512 x 1024 tokens a worker, so the
inner steps are far noisier than the paper's; 3 seeds.

This scale misses the perplexity claim (first full run: ratio 1.385 +- 0.015; sync 4.87-4.90,
DiLoCo 6.69-6.85). One-seed diagnostics, not part of the claim: one replica alone (`single`,
batch 8, 1000 updates) reaches 9.41, so the 8x batch is worth a factor 1.9 in perplexity here
against the paper's 16.23 / 15.30 = 1.06, i.e. each replica's batch is far below the regime in
which the paper's workers train; H = 10 reaches 5.02 (1.02x sync), plain averaging (outer lr 1,
no momentum) at H = 100 6.98.

  python -m pdist.reproduce --only douillard2023_diloco
"""

import os

PAPER = "Douillard et al. 2023, DiLoCo: 8 workers, H in the hundreds, match synchronous training"
SEEDS = 3
WARMUP, TINY_WARMUP = 200, 4   # tiny: 8 updates, 4 synchronous then one round of H = 4
CLAIMS = [
    {"name": "perplexity_ratio", "published": "15.02 / 15.30 = 0.98 (Table 2)", "claim": "DiLoCo (8 replicas, inner AdamW, outer Nesterov 0.7 / "
     "0.9, H = 100) reaches the validation perplexity of synchronous data parallelism at the "
     "same tokens (paper: 15.02 / 15.30 = 0.98)", "metric": "eval_perplexity ratio diloco / sync",
     "low": 0.95, "high": 1.03},
    {"name": "syncs_ratio", "published": "500x fewer (H = 500)", "claim": "with at least 50x fewer synchronisations after the "
     "synchronous start (paper: 500x; bookkeeping: fixed by H = 100)", "metric": "syncs ratio sync / diloco (local phase)",
     "low": 50.0, "high": float("inf")},
]


def run(workdir: str, tiny: bool, train, config_lib, root: str) -> dict:
  """{claim name: [per-seed values]}."""
  spec = os.path.join(root, "experiments", "diloco.py")
  warmup = TINY_WARMUP if tiny else WARMUP
  scale = [] if tiny else ["--config.data.seq_len=64", "--config.model.width=64",
                           "--config.train.steps=1000"]
  common = scale + ["--config.train.eval_every=0", "--config.train.progress=False",
                    "--config.train.tensorboard=False"]
  # diloco.py's tiny preset shortens H even under `sync` (presets apply tiny last), which sync
  # refuses as a field it does not read: put it back at its default there
  sync_extra = [f"--config.local.inner_steps={config_lib.base_config().local.inner_steps}"]
  out = {claim["name"]: [] for claim in CLAIMS}
  for seed in range(SEEDS):
    runs = {}
    for name, preset, extra in (("sync", "sync", sync_extra if tiny else []),
                                ("diloco", None, [f"--config.local.sync_warmup={warmup}"])):
      presets = ",".join(p for p in (preset, "tiny" if tiny else None) if p)
      config = config_lib.load(spec + (f":{presets}" if presets else ""),
                               common + extra + [f"--config.train.seed={seed}"])
      runs[name] = train.run(config, os.path.join(workdir, f"{name}_{seed}")).summary
    sync, diloco = runs["sync"], runs["diloco"]
    out["perplexity_ratio"].append(diloco["eval_perplexity"] / sync["eval_perplexity"])
    # the synchronisations after the synchronous start, as the paper counts DiLoCo's (8xN/H)
    out["syncs_ratio"].append((sync["syncs"] - warmup) / (diloco["syncs"] - warmup))
  from pdist.reproduce import claims_figure
  claims_figure(out, CLAIMS, os.path.join(workdir, "figure.png"), PAPER)
  return out
