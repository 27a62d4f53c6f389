"""Writes the notebooks under notebooks/ from the cell sources below, executed, with their outputs
(so a reader sees the curves without running anything).

Notebooks hold no logic of their own: they call pdist's API, work in a temporary folder and remove
it at the end. tests/test_notebooks.py executes them again.
  make notebooks        (= .venv/bin/python tools/make_notebooks.py)
"""

import functools
import os

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

QUICKSTART = [
    new_markdown_cell(
        "# pdist quickstart\n\n"
        "Two runs through the library API: the seed's quadratic (gradient descent on "
        "mean(theta^2), checked against its closed form) and a short MNIST-1D classifier. "
        "The same runs from the shell:\n\n"
        "```\npython -m pdist --config experiments/seed_quadratic.py --workdir runs/seed_quadratic\n"
        "python -m pdist --config experiments/mnist1d.py:cnn --workdir runs/mnist1d_cnn\n```"),
    new_code_cell(
        "import os, tempfile\n"
        "import numpy as np\n"
        "import jax\n"
        "import matplotlib.pyplot as plt\n"
        "from pdist import config as config_lib, metrics, train\n\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_quickstart_')\n"
        "print(jax.devices())"),
    new_markdown_cell(
        "## The seed's example\n"
        "theta in R^1000, loss = mean(theta^2), learning rate 0.01. Each step multiplies theta by "
        "(1 - 2 lr / 1000), so loss_t = loss_0 (1 - 2 lr / 1000)^(2t)."),
    new_code_cell(
        "seed_cfg = config_lib.load(os.path.join(ROOT, 'experiments/seed_quadratic.py'))\n"
        "seed_cfg.train.progress = False\n"
        "seed = train.run(seed_cfg, os.path.join(workdir, 'seed'))\n"
        "rows = metrics.read(os.path.join(workdir, 'seed'))\n"
        "steps = np.array([r['step'] for r in rows])\n"
        "measured = np.array([r['eval_loss'] for r in rows])\n"
        "theta0 = seed.strategy.task.init(jax.random.PRNGKey(seed_cfg.train.seed))['theta']\n"
        "closed = float(np.mean(np.asarray(theta0, np.float64) ** 2)) * (1 - 2 * 0.01 / 1000) ** (2 * steps)\n"
        "print('max relative error vs closed form:', np.max(np.abs(measured / closed - 1)))\n"
        "assert np.allclose(measured, closed, rtol=1e-5)"),
    new_markdown_cell("## MNIST-1D with a small 1-D CNN (800 updates, about 10 s on 2 CPU cores)"),
    new_code_cell(
        "cnn_cfg = config_lib.load(os.path.join(ROOT, 'experiments/mnist1d.py') + ':cnn',\n"
        "                          ['--config.train.steps=800', '--config.train.eval_every=200',\n"
        "                           '--config.train.log_every=100', '--config.train.progress=False'])\n"
        "cnn = train.run(cnn_cfg, os.path.join(workdir, 'cnn'))\n"
        "print({k: round(v, 4) for k, v in cnn.summary.items() if isinstance(v, float)})"),
    new_code_cell(
        "fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))\n"
        "axes[0].semilogy(steps, measured, 'o', label='pdist')\n"
        "axes[0].semilogy(steps, closed, '-', label='closed form')\n"
        "axes[0].set(title='seed quadratic', xlabel='updates', ylabel='loss'); axes[0].legend()\n"
        "rows = [r for r in metrics.read(os.path.join(workdir, 'cnn')) if 'eval_accuracy' in r]\n"
        "axes[1].plot([r['step'] for r in rows], [r['eval_accuracy'] for r in rows], 'o-')\n"
        "axes[1].set(title='MNIST-1D CNN', xlabel='updates', ylabel='test accuracy')\n"
        "plt.tight_layout(); plt.show()"),
]


PARAMETER_SERVER = [
    new_markdown_cell(
        "# The parameter server\n\n"
        "Workers pull parameters from server shards, compute gradients on their own data and push "
        "them back, under bsp, ssp or async consistency, in simulated time (compute-time "
        "distributions, stragglers, network latency and bandwidth, crashes). The simulator decides "
        "the order of pushes and pulls on the host; the math is replayed in compiled chunks."),
    new_code_cell(
        "import os, json\n"
        "import jax\n"
        "from IPython.display import Image, display\n"
        "from pdist import config as config_lib, data, strategies, tasks, train\n"
        "from pdist.ps import ParameterServer, Simulator\n"
        "from pdist.sweep import run_sweep\n"
        "import tempfile\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_ps_')"),
    new_markdown_cell(
        "## The API by hand\n"
        "The seed's quadratic with theta in 4 parts on 2 server shards, 3 async workers with "
        "lognormal compute times. `Simulator.advance` says who applies and who pulls; "
        "`ParameterServer.push` returns each shard's staleness of the gradient it applied."),
    new_code_cell(
        "cfg = config_lib.load(os.path.join(ROOT, 'experiments/seed_ps.py') + ':async',\n"
        "                      ['--config.ps.workers=3', '--config.ps.shards=2',\n"
        "                       '--config.ps.compute_time.dist=lognormal',\n"
        "                       '--config.ps.compute_time.spread=0.5'])\n"
        "task = tasks.build(cfg, data.load(cfg.data))\n"
        "ps = strategies.build(cfg, task)   # the `ps` strategy, for its optimizer, data and workers\n"
        "state = ps.init(jax.random.PRNGKey(0))\n"
        "server = ParameterServer(state['params'], ps.tx, num_shards=2)\n"
        "workers = [ps.make_worker(k, state) for k in range(3)]\n"
        "sim = Simulator(cfg.ps, cfg.network, ps.shard_bytes, seed=0)\n"
        "pending = {}\n"
        "for op in sim.advance(8).ops:\n"
        "    if op.apply_worker >= 0:\n"
        "        grads, versions = pending.pop(op.apply_worker)\n"
        "        print(f'worker {op.apply_worker} pushes, staleness per shard:',\n"
        "              server.push(op.apply_worker, grads, versions))\n"
        "    if op.pull_worker >= 0:\n"
        "        _, versions = server.pull()\n"
        "        pending[op.pull_worker] = (workers[op.pull_worker].compute(server.params, op.pull_iteration), versions)\n"
        "print('simulated time', sim.time, 'shard versions', server.versions)"),
    new_markdown_cell(
        "## Staleness and the learning rate (Zhang et al. 2016)\n"
        "bsp K vs async K at one fixed learning rate, with and without lr / staleness, for the same "
        "simulated time (the `short` variant: 50 time units)."),
    new_code_cell(
        "runs = run_sweep(os.path.join(ROOT, 'experiments/staleness.py') + ':short',\n"
        "                 os.path.join(workdir, 'staleness'), ['--config.train.progress=False'])\n"
        "for r in runs:\n"
        "    print(f\"{r['variant']:16s} updates {r['step']:5d}  test accuracy {r['eval_accuracy']:.3f}\")\n"
        "display(Image(os.path.join(workdir, 'staleness', 'curves_sim_time.png')))"),
    new_markdown_cell(
        "## Stragglers: bsp, bsp with a backup worker, async\n"
        "10 workers, one of them 5x slower; loss against simulated wall-clock."),
    new_code_cell(
        "runs = run_sweep(os.path.join(ROOT, 'experiments/stragglers.py') + ':short',\n"
        "                 os.path.join(workdir, 'stragglers'), ['--config.train.progress=False'])\n"
        "for r in runs:\n"
        "    print(f\"{r['variant']:12s} updates {r['step']:4d}  sim time {r['sim_time']:6.1f}  \"\n"
        "          f\"dropped {r['dropped_gradients']:3d}  test accuracy {r['eval_accuracy']:.3f}\")\n"
        "display(Image(os.path.join(workdir, 'stragglers', 'curves_sim_time.png')))"),
]


RECOVERY = [
    new_markdown_cell(
        "# Recovery: interrupt a run, resume it, get the same numbers\n\n"
        "A run with a checkpoint every 100 updates is preempted (SIGTERM) after its second "
        "checkpoint, then started again with the same config and workdir: it resumes from the "
        "checkpoint and ends with exactly the parameters of a run that never stopped."),
    new_code_cell(
        "import os, tempfile, json\n"
        "import jax\n"
        "import numpy as np\n"
        "from IPython.display import Image, display\n"
        "from pdist import config as config_lib, launch, metrics, plots, train\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_recovery_')\n"
        "spec = os.path.join(ROOT, 'experiments/mnist1d.py') + ':mlp'\n"
        "overrides = ['--config.train.steps=600', '--config.train.log_every=50',\n"
        "             '--config.train.eval_every=100', '--config.checkpoint.every=100',\n"
        "             '--config.train.progress=False']\n"
        "config = config_lib.load(spec, overrides)"),
    new_code_cell(
        "straight = train.run(config, os.path.join(workdir, 'uninterrupted'))\n"
        "interrupted_dir = os.path.join(workdir, 'interrupted')\n"
        "status = launch.run_and_interrupt(['--config', spec, '--workdir', interrupted_dir, *overrides],\n"
        "                                  after_checkpoints=2)\n"
        "print('exit status', status, '(75 = preempted, checkpoint saved)')\n"
        "print('logged before the interruption:', [r['step'] for r in metrics.read(interrupted_dir)])"),
    new_code_cell(
        "resumed = train.run(config, interrupted_dir)   # same config, same workdir: resumes\n"
        "print('resumed from update', resumed.summary['resumed_from'])\n"
        "diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))\n"
        "           for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)))\n"
        "print('largest parameter difference to the uninterrupted run:', diff)\n"
        "assert diff == 0.0\n"
        "assert [r['step'] for r in metrics.read(interrupted_dir)] == [r['step'] for r in straight.rows]"),
    new_code_cell(
        "png = plots.plot_runs([os.path.join(workdir, 'uninterrupted'), interrupted_dir],\n"
        "                      os.path.join(workdir, 'both.png'),\n"
        "                      labels=['uninterrupted', 'interrupted + resumed'])\n"
        "display(Image(png))"),
]


COMPRESSION = [
    new_markdown_cell(
        "# Communication compression\n\n"
        "Four workers push compressed gradients to a bandwidth-limited parameter server (bsp, "
        "MNIST-1D MLP; experiments/compression.py, cut to 150 updates). Compression shrinks the "
        "pushes, so rounds end sooner in simulated time; error feedback carries what a biased "
        "compressor drops into the next gradient. The full sweep:\n\n"
        "```\npython -m pdist.sweep --config experiments/compression.py --workdir runs/compression\n```"),
    new_code_cell(
        "import os, tempfile\n"
        "import jax, jax.numpy as jnp\n"
        "from IPython.display import Image, display\n"
        "from pdist import config as config_lib, plots, train\n"
        "from pdist.compression import base, topk\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_compression_')\n"
        "spec = os.path.join(ROOT, 'experiments/compression.py')\n"
        "common = ['--config.train.steps=150', '--config.train.eval_every=50', '--config.train.progress=False']"),
    new_markdown_cell(
        "## Error feedback by hand\n"
        "top-k keeps 10% of a vector; the residual holds the rest, and sent + residual is the "
        "gradient exactly."),
    new_code_cell(
        "g = {'w': jax.random.normal(jax.random.PRNGKey(0), (10,))}\n"
        "ef = base.compression_transform(topk.make(config_lib.load(spec + ':topk', ['--config.compression.ratio=0.1'])), True, g)\n"
        "sent, state, stats = ef.update(g, ef.init(g), None, jax.random.PRNGKey(1))\n"
        "show = lambda x: [round(float(v), 2) for v in x]\n"
        "print('gradient', show(g['w']))\n"
        "print('sent    ', show(sent['w']))\n"
        "print('residual', show(state['residual']['w']))\n"
        "print('bytes up', int(stats['bytes_up']), 'of', 4 * 10, 'dense')\n"
        "assert jnp.allclose(sent['w'] + state['residual']['w'], g['w'])"),
    new_markdown_cell(
        "## Four runs: accuracy against bytes and against simulated time\n"
        "150 updates are too few for error feedback to pay off (the residual needs time to be "
        "spent); the full sweep's 600 updates show it: top-k 1% of the whole gradient (the "
        "default scope) reaches 0.645 with error feedback and 0.560 without; per leaf, 0.662 "
        "with error feedback (README)."),
    new_code_cell(
        "runs = {'none': [], 'topk 1% + EF': ['--config.compression.name=topk'],\n"
        "        'topk 1%, no EF': ['--config.compression.name=topk', '--config.compression.error_feedback=False'],\n"
        "        'sign + EF': ['--config.compression.name=sign']}\n"
        "dirs = []\n"
        "for label, extra in runs.items():\n"
        "    d = os.path.join(workdir, label.replace(' ', '_').replace('%', '').replace(',', ''))\n"
        "    s = train.run(config_lib.load(spec, common + extra), d).summary\n"
        "    dirs.append(d)\n"
        "    print(f\"{label:16s} test accuracy {s['eval_accuracy']:.3f}  bytes pushed {s['bytes_pushed'] / 1e6:7.1f} MB  \"\n"
        "          f\"sim time {s['sim_time']:6.1f}\")\n"
        "display(Image(plots.plot_runs(dirs, os.path.join(workdir, 'bytes.png'), x='bytes_pushed', labels=list(runs))))\n"
        "display(Image(plots.plot_runs(dirs, os.path.join(workdir, 'time.png'), x='sim_time', labels=list(runs))))"),
]


FEDERATED = [
    new_markdown_cell(
        "# Federated learning\n\n"
        "100 clients hold 14 sklearn-digits images each; every round 10 of them train locally and "
        "the server averages their changes (experiments/fedavg.py, cut to 150 rounds). First: "
        "FedAvg (5 local epochs of batch 10) against FedSGD (one full-batch step a client), on IID "
        "clients and on label-skewed ones (two digits a client). Then: what clients dropping out "
        "mid-round does. From the shell:\n\n"
        "```\npython -m pdist.sweep --config experiments/fedavg.py --workdir runs/fedavg_sweep\n"
        "python -m pdist --config experiments/fedavg.py:dropouts --workdir runs/fedavg_dropouts\n```"),
    new_code_cell(
        "import os, tempfile\n"
        "from IPython.display import Image, display\n"
        "from pdist import config as config_lib, plots, train\n\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "spec = os.path.join(ROOT, 'experiments/fedavg.py')\n"
        "common = ['--config.train.steps=150', '--config.train.progress=False', '--config.train.tensorboard=False']\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_federated_')\n\n"
        "def rounds_to(rows, target):\n"
        "    return next((r['step'] for r in rows if r.get('eval_accuracy', 0) >= target), None)"),
    new_markdown_cell("## Rounds to accuracy: FedAvg against FedSGD"),
    new_code_cell(
        "fedsgd = ['--config.federated.local_epochs=1', '--config.data.batch_size=1400', '--config.federated.client_lr=0.5']\n"
        "runs = {'FedAvg, IID': [], 'FedSGD, IID': fedsgd,\n"
        "        'FedAvg, label-skewed': ['--config.data.partition=label'],\n"
        "        'FedSGD, label-skewed': fedsgd + ['--config.data.partition=label']}\n"
        "dirs = []\n"
        "for label, extra in runs.items():\n"
        "    d = os.path.join(workdir, label.replace(' ', '').replace(',', '_'))\n"
        "    result = train.run(config_lib.load(spec, common + extra), d)\n"
        "    dirs.append(d)\n"
        "    print(f\"{label:22s} rounds to 90%: {rounds_to(result.rows, 0.9)}   \"\n"
        "          f\"test accuracy after 150: {result.summary['eval_accuracy']:.3f}\")\n"
        "display(Image(plots.plot_runs(dirs, os.path.join(workdir, 'fedavg.png'), labels=list(runs))))"),
    new_markdown_cell(
        "## Dropouts\n"
        "A client that drops out mid-round uploads nothing; the server averages whoever arrived. "
        "The curves against simulated time also show the round's length: with a deadline the "
        "server stops waiting for stragglers."),
    new_code_cell(
        "runs = {'no dropouts': [], '30% drop out': ['--config.federated.dropouts.rate=0.3'],\n"
        "        '70% drop out': ['--config.federated.dropouts.rate=0.7']}\n"
        "dirs = []\n"
        "for label, extra in runs.items():\n"
        "    d = os.path.join(workdir, label.replace(' ', '_').replace('%', ''))\n"
        "    s = train.run(config_lib.load(spec, common + extra), d).summary\n"
        "    dirs.append(d)\n"
        "    print(f\"{label:14s} test accuracy {s['eval_accuracy']:.3f}   clients dropped \"\n"
        "          f\"{s['clients_dropped']} of {s['clients_sampled']}\")\n"
        "display(Image(plots.plot_runs(dirs, os.path.join(workdir, 'dropouts.png'), labels=list(runs))))"),
]


LOW_COMMUNICATION = [
    new_markdown_cell(
        "# Communicating rarely: local SGD, DiLoCo, gossip\n\n"
        "Eight replicas of an MNIST-1D MLP (128, 128) train on the same global batches of 128 "
        "(16 each) for 3000 updates, synchronising in different ways: `sync` (an all-reduce of "
        "the gradient every update), local SGD (parameters averaged every H updates), DiLoCo "
        "(inner AdamW, outer Nesterov every H), streaming DiLoCo (3 fragments at staggered "
        "updates) and gossip (each replica averages with its neighbours every update, no "
        "server). Every run is priced on two networks by pdist/network.py's one model (ring "
        "all-reduce, gossip messages; one update's computation = 10 ms), without running it "
        "again. From the shell:\n\n"
        "```\npython -m pdist --local_devices 8 --config experiments/local_sgd.py:diloco --workdir runs/diloco\n"
        "python -m pdist --local_devices 8 --config experiments/gossip.py:exponential --workdir runs/gossip\n```"),
    new_code_cell(
        "import os, tempfile\n"
        "# eight CPU devices, one replica each (set before jax starts; a forced count is kept)\n"
        "if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):\n"
        "    os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'\n"
        "import jax\n"
        "import ml_collections\n"
        "from IPython.display import Image, display\n"
        "from pdist import config as config_lib, plots, train\n"
        "from pdist.network import GBIT, Network\n\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_lowcomm_')\n"
        "print(len(jax.devices()), 'devices')"),
    new_markdown_cell(
        "## Eight runs, about 80 s on 2 CPU cores\n"
        "The loss drawn is the training loss on the whole training set at the parameters the run "
        "evaluates (DiLoCo's outer parameters; gossip's replica average), every 100 updates."),
    new_code_cell(
        "L = os.path.join(ROOT, 'experiments/local_sgd.py')\n"
        "G = os.path.join(ROOT, 'experiments/gossip.py')\n"
        "common = ['--config.train.progress=False', '--config.train.tensorboard=False',\n"
        "          '--config.checkpoint.every=0', '--config.train.eval_every=100',\n"
        "          '--config.train.eval_train=True']\n"
        "runs = {'sync': (L, 'sync'), 'local SGD, H=4': (L, 'H=4'), 'local SGD, H=32': (L, 'H=32'),\n"
        "        'DiLoCo, H=50': (L, 'diloco'), 'DiLoCo, H=500': (L, 'diloco,H=500'),\n"
        "        'streaming DiLoCo, H=50, 3 fragments': (L, 'streaming'),\n"
        "        'gossip, ring': (G, 'ring'), 'gossip, exponential graph': (G, 'exponential')}\n"
        "results = {}\n"
        "for label, (spec, preset) in runs.items():\n"
        "    results[label] = r = train.run(config_lib.load(f'{spec}:{preset}', common),\n"
        "                                   os.path.join(workdir, preset.replace(',', '_')))\n"
        "    last = r.rows[-1]\n"
        "    print(f\"{label:37s} syncs {last['syncs']:6g}   training loss {r.summary['train_eval_loss']:.4f}\"\n"
        "          f\"   test accuracy {r.summary['eval_accuracy']:.3f}\")"),
    new_code_cell(
        "networks = {'1 Gbit/s, 1 ms latency': ml_collections.ConfigDict({'bandwidth': GBIT, 'latency': 0.001}),\n"
        "            '100 Mbit/s, 50 ms latency': ml_collections.ConfigDict({'bandwidth': 0.1 * GBIT, 'latency': 0.05})}\n"
        "for name, net in networks.items():\n"
        "    times = {label: r.strategy.communication(r.rows[-1]['step'], Network(net))['sim_time']\n"
        "             for label, r in results.items()}\n"
        "    print(name + ':', ', '.join(f'{k} {v:.0f} s' for k, v in times.items()))\n"
        "display(Image(plots.plot_networks(results, networks, os.path.join(workdir, 'networks.png'))))"),
    new_markdown_cell(
        "Against communication rounds, the rarer the synchronisation the further left: DiLoCo "
        "with H = 50 reaches sync's training loss with 60 exchanges instead of 3000. On the slow "
        "network the all-reduce of every update dominates sync's time (its 14 messages of 50 ms "
        "each cost 0.7 s against 10 ms of computation), and the runs that communicate rarely "
        "finish one to two orders of magnitude sooner. Gossip sends twice (ring) or three times "
        "(exponential graph) the model every update but needs no all-reduce: on the slow network it "
        "beats sync and local SGD with H = 4, not the runs that synchronise every 32 updates or "
        "fewer times. The model here does not overlap communication with "
        "computation, so streaming DiLoCo's staggered fragments cost their latency three times "
        "a round (its gain, a third of the peak bandwidth, is not priced)."),
]


SHARDING = [
    new_markdown_cell(
        "# Sharded training: where the state lives on a named mesh\n\n"
        "`sync` on the mesh data x fsdp x tensor x pipeline (`config.sync.mesh`, "
        "`config.sync.zero`): ZeRO stages shard the optimizer state, then the gradients, then the "
        "parameters along `fsdp`; `tensor` splits matmuls in Megatron's column / row pairs; "
        "`pipeline` cuts the blocks into stages run on GPipe's schedule. This notebook reads the "
        "layouts of experiments/lm_large.py's 100.9M-parameter Transformer from its shapes "
        "(nothing allocated), then trains a small MLP on each layout and reads the collectives "
        "of its compiled update. From the shell:\n\n"
        "```\npython -m pdist --local_devices 8 --config experiments/lm_large.py --workdir runs/lm_large\n"
        "python benchmarks/sharded.py\n```"),
    new_code_cell(
        "import os, math, tempfile\n"
        "if 'xla_force_host_platform_device_count' not in os.environ.get('XLA_FLAGS', ''):\n"
        "    os.environ['XLA_FLAGS'] = os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'\n"
        "import jax, numpy as np\n"
        "import matplotlib\n"
        "matplotlib.use('Agg')\n"
        "import matplotlib.pyplot as plt\n"
        "from IPython.display import Image, display\n"
        "from jax.sharding import Mesh, PartitionSpec as P\n"
        "from pdist import config as config_lib, data, optim, strategies, tasks, train\n"
        "from pdist.parallel import layout, stages\n\n"
        "ROOT = os.path.abspath('..') if os.path.basename(os.getcwd()) == 'notebooks' else os.getcwd()\n"
        "workdir = tempfile.mkdtemp(prefix='pdist_sharding_')\n"
        "print(len(jax.devices()), 'devices')"),
    new_markdown_cell(
        "## Per-device memory of the 100M model, by layout\n"
        "Bytes per device of each leaf = its bytes / the sizes of the mesh axes its "
        "PartitionSpec names (parameters and Adam's two moments, float32)."),
    new_code_cell(
        "c = config_lib.load(os.path.join(ROOT, 'experiments/lm_large.py'))\n"
        "task = tasks.build(c, data.load(c.data))\n"
        "shapes = jax.eval_shape(task.init, jax.random.PRNGKey(0))\n"
        "tx = optim.build(c)\n"
        "opt = jax.eval_shape(tx.init, shapes)\n"
        "layouts = {'data 8 (replicated)': ({'data': 8, 'fsdp': 1, 'tensor': 1, 'pipeline': 1}, 0),\n"
        "           'fsdp 8, ZeRO-1': ({'data': 1, 'fsdp': 8, 'tensor': 1, 'pipeline': 1}, 1),\n"
        "           'fsdp 8, ZeRO-2': ({'data': 1, 'fsdp': 8, 'tensor': 1, 'pipeline': 1}, 2),\n"
        "           'fsdp 8, ZeRO-3': ({'data': 1, 'fsdp': 8, 'tensor': 1, 'pipeline': 1}, 3),\n"
        "           'tensor 8': ({'data': 1, 'fsdp': 1, 'tensor': 8, 'pipeline': 1}, 0),\n"
        "           'fsdp 4 x tensor 2, ZeRO-3': ({'data': 1, 'fsdp': 4, 'tensor': 2, 'pipeline': 1}, 3),\n"
        "           'pipeline 8': ({'data': 1, 'fsdp': 1, 'tensor': 1, 'pipeline': 8}, 0),\n"
        "           'pipeline 4 x fsdp 2, ZeRO-3': ({'data': 1, 'fsdp': 2, 'tensor': 1, 'pipeline': 4}, 3)}\n"
        "# a pipeline stores the 8 blocks stacked [8, ...], split along `pipeline`\n"
        "stacked = jax.eval_shape(lambda p: stages.stack(p, stages.parts(task.module).blocks), shapes)\n\n"
        "def per_device(tree, specs, sizes):\n"
        "    flat = jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))\n"
        "    return sum(x.size * x.dtype.itemsize / math.prod(sizes[a] for a in s if a)\n"
        "               for x, s in zip(jax.tree.leaves(tree), flat))\n\n"
        "rows = {}\n"
        "for name, (sizes, zero) in layouts.items():\n"
        "    mesh = Mesh(np.array(jax.devices()[:8]).reshape([sizes[a] for a in layout.AXES]), layout.AXES)\n"
        "    tree = stacked if sizes['pipeline'] > 1 else shapes\n"
        "    lay = layout.Layout(mesh, sizes, zero, tree, tx)\n"
        "    rows[name] = (per_device(tree, lay.param_specs, sizes) / 1e6,\n"
        "                  per_device(tree, lay.grad_specs, sizes) / 1e6,\n"
        "                  per_device(jax.eval_shape(tx.init, tree), lay.opt_specs, sizes) / 1e6)\n"
        "    print(f'{name:28s} params {rows[name][0]:7.1f} MB  gradient {rows[name][1]:7.1f} MB  Adam state {rows[name][2]:7.1f} MB')\n"
        "fig, ax = plt.subplots(figsize=(8, 4))\n"
        "y = np.arange(len(rows))\n"
        "for k, (label, color) in enumerate([('parameters', 'C0'), ('gradient', 'C1'), ('Adam state', 'C2')]):\n"
        "    ax.barh(y + (k - 1) * 0.27, [r[k] for r in rows.values()], height=0.27, label=label, color=color)\n"
        "ax.set_yticks(y, list(rows))\n"
        "ax.invert_yaxis()\n"
        "ax.set_xlabel('MB per device (8 devices)')\n"
        "ax.set_title('lm_large.py (100.9M parameters): state per device, by layout')\n"
        "ax.legend(loc='lower right')\n"
        "fig.tight_layout()\n"
        "fig.savefig(os.path.join(workdir, 'memory.png'), dpi=100)\n"
        "plt.close(fig)\n"
        "display(Image(os.path.join(workdir, 'memory.png')))"),
    new_markdown_cell(
        "## Every layout trains single-device SGD; the collectives of one update\n"
        "An MLP 40-256-256-10 with Adam, 20 updates of batch 64 on each layout, against `single`; "
        "then the compiled update's collectives (count, result bytes) read from XLA's program."),
    new_code_cell(
        "def mlp(**fields):\n"
        "    c = config_lib.load(os.path.join(ROOT, 'experiments/mnist1d.py') + ':tiny,mlp',\n"
        "                        ['--config.train.progress=False', '--config.train.tensorboard=False'])\n"
        "    c.optim.name, c.optim.learning_rate = 'adam', 0.003\n"
        "    c.data.batch_size, c.model.hidden = 64, (256, 256)\n"
        "    c.train.steps, c.train.log_every, c.train.eval_every = 20, 10, 0\n"
        "    for k, v in fields.items():\n"
        "        config_lib.set_field(c, k, v)\n"
        "    return c\n\n"
        "ref = train.run(mlp()).params\n"
        "fsdp8 = {'strategy': 'sync', 'sync.mesh.data': 1, 'sync.mesh.fsdp': 8}\n"
        "cases = {'data 8 (DDP)': {'strategy': 'sync', 'sync.bucket_mb': 0.0},\n"
        "         'ZeRO-1': {**fsdp8, 'sync.zero': 1}, 'ZeRO-2': {**fsdp8, 'sync.zero': 2},\n"
        "         'ZeRO-3': {**fsdp8, 'sync.zero': 3},\n"
        "         'tensor 8': {'strategy': 'sync', 'sync.mesh.data': 1, 'sync.mesh.tensor': 8}}\n"
        "for name, fields in cases.items():\n"
        "    c = mlp(**fields)\n"
        "    got = train.run(c)\n"
        "    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))\n"
        "               for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got.params)))\n"
        "    s = strategies.build(c, tasks.build(c, data.load(c.data)))\n"
        "    state = s.init(jax.random.PRNGKey(0))\n"
        "    idx = jax.device_put(s.indices(0, 1), s._indices_sharding)\n"
        "    found = layout.collectives(s._chunk.lower(state, s.data, idx, 1, None).compile().as_text())\n"
        "    said = ', '.join(f\"{k} x{v['count']} ({v['bytes'] / 1e3:.1f} kB)\" for k, v in sorted(found.items()))\n"
        "    print(f'{name:12s} max |theta - single| {diff:.1e}   {said}')"),
    new_markdown_cell(
        "ZeRO-1 all-reduces the gradient and all-gathers the updated blocks; ZeRO-2 replaces the "
        "all-reduce by a reduce-scatter (data parallelism's volume); ZeRO-3 keeps only blocks of "
        "the parameters and gathers them where they are used. (The textbook ZeRO-3 gathers once "
        "more for the backward pass; XLA's CPU compiler merges that gather with the forward "
        "one.) Tensor parallelism here is GSPMD's: XLA chooses its collectives from the "
        "placements."),
    new_markdown_cell(
        "## The pipeline's bubble against micro-batches\n"
        "With p stages and m micro-batches, GPipe keeps each stage idle for p - 1 of its "
        "m + p - 1 ticks (Huang et al. 2019). Left: the idle slots of the schedule table that "
        "`stages.gpipe` runs (`stages.schedule`) against (p - 1) / (m + p - 1). Right: what the "
        "bubble costs. pdist's schedule is one program for all stages (a vmap over the stage "
        "dimension), so an idle slot is a stage computing on padding: run on one device, a forward "
        "and backward pass through 8 blocks (tanh(h W), W 256 x 256, 512 rows) on 4 stages, "
        "against the same blocks applied in sequence without a pipeline. The measured ratio falls "
        "with m as (m + p - 1) / m does, but stays above it (the loop's bookkeeping: rolling, "
        "selecting and storing the activations of every tick). (On 8 emulated CPU devices, which "
        "share two cores, the per-tick collective-permutes dominate instead.)"),
    new_code_cell(
        "import time, jax.numpy as jnp\n"
        "def counted(p, m):   # the idle slots of the table gpipe runs\n"
        "    return stages.bubble(stages.schedule(p, m))\n\n"
        "print('p = 3, m = 2: micro-batch of each stage (columns) at each tick (rows), -1 idle')\n"
        "print(stages.schedule(3, 2))\n"
        "ms = [1, 2, 4, 8, 16, 32]\n"
        "fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))\n"
        "for k, p in enumerate([2, 4, 8]):\n"
        "    grid = np.linspace(1, 32, 200)\n"
        "    ax.plot(grid, (p - 1) / (grid + p - 1), color=f'C{k}', lw=1, label=f'p = {p}: (p-1)/(m+p-1)')\n"
        "    ax.plot(ms, [counted(p, m) for m in ms], 'o', color=f'C{k}', label=f'p = {p}: schedule table')\n"
        "ax.set_xscale('log', base=2)\n"
        "ax.set_xlabel('micro-batches m')\n"
        "ax.set_ylabel('idle fraction of each stage')\n"
        "ax.set_title('GPipe bubble: the schedule run vs theory')\n"
        "ax.legend(fontsize=8)\n\n"
        "dev = jax.devices()[0]\n"
        "w = jax.device_put(np.random.default_rng(0).normal(size=(8, 256, 256)).astype(np.float32) / 16, dev)\n"
        "x = jax.device_put(np.ones((512, 256), np.float32), dev)\n"
        "block = lambda wi, h: jnp.tanh(h @ wi)\n"
        "def best_ms(f):\n"
        "    f(w, x).block_until_ready()\n"
        "    runs = []\n"
        "    for _ in range(7):\n"
        "        t = time.perf_counter(); f(w, x).block_until_ready(); runs.append(time.perf_counter() - t)\n"
        "    return 1e3 * min(runs)\n"
        "sequential = best_ms(jax.jit(jax.grad(lambda w, x: jax.lax.scan(lambda h, wi: (block(wi, h), None), x, w)[0].sum())))\n"
        "ratios = []\n"
        "for m in ms:\n"
        "    t = best_ms(jax.jit(jax.grad(lambda w, x, m=m: stages.gpipe(block, w, x, 4, m)[0].sum())))\n"
        "    ratios.append(t / sequential)\n"
        "    print(f'p = 4, m = {m:2d}: {t:6.1f} ms = {ratios[-1]:.2f} x the blocks in sequence ({sequential:.1f} ms); (m+p-1)/m = {(m + 3) / m:.2f}')\n"
        "bx.plot(grid, (grid + 3) / grid, 'k-', lw=1, label='(m + p - 1) / m')\n"
        "bx.plot(ms, ratios, 'o-', color='C1', label='measured, one device')\n"
        "bx.set_xscale('log', base=2)\n"
        "bx.set_xlabel('micro-batches m (p = 4)')\n"
        "bx.set_ylabel('time / blocks in sequence')\n"
        "bx.set_title('4 stages, forward + backward: the bubble as compute')\n"
        "bx.legend()\n"
        "fig.tight_layout()\n"
        "fig.savefig(os.path.join(workdir, 'bubble.png'), dpi=100)\n"
        "plt.close(fig)\n"
        "display(Image(os.path.join(workdir, 'bubble.png')))"),
    new_markdown_cell(
        "Training on pipeline 4 x data 2 (an MLP with 8 identical 64-wide hidden layers) at "
        "several micro-batch counts: the rows carry the schedule's bubble, and every run trains the "
        "parameters `single` trains, to float rounding (Adam turns reordered sums in near-zero "
        "gradients into differences of ~1e-5); micro-batches change the schedule, not the "
        "math."),
    new_code_cell(
        "deep = {'model.hidden': (64,) * 9, 'train.steps': 20}\n"
        "ref = train.run(mlp(**deep))\n"
        "for m in [1, 4, 16]:\n"
        "    got = train.run(mlp(**deep, **{'strategy': 'sync', 'sync.mesh.pipeline': 4,\n"
        "                                   'sync.microbatches': m}))\n"
        "    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))\n"
        "               for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(got.params)))\n"
        "    row = got.rows[-1]\n"
        "    print(f\"m = {m:2d}: bubble {row['pipeline_bubble']:.3f} (theory {row['pipeline_bubble_theory']:.3f}), \"\n"
        "          f\"max |theta - single| {diff:.1e}\")"),
    new_markdown_cell(
        "The 1F1B schedule (PipeDream-Flush, Narayanan et al. 2021) has the same bubble and holds "
        "p micro-batches' activations instead of m; pdist runs GPipe only."),
]


CLEAN_UP = new_code_cell("import shutil\nshutil.rmtree(workdir)  # this notebook's temporary runs")


def write(name, cells, execute: bool = True):
  nb = new_notebook(cells=cells + [CLEAN_UP], metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"}})
  for i, cell in enumerate(nb.cells):  # stable ids: regenerating changes only what changed
    cell["id"] = f"{os.path.splitext(name)[0]}-{i}"
  if execute:
    from nbclient import NotebookClient
    env = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + env if env else "")
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}}).execute()
    for cell in nb.cells:  # keep outputs, drop timing metadata that changes on every run
      cell.get("metadata", {}).pop("execution", None)
  path = os.path.join(ROOT, "notebooks", name)
  nbformat.write(nb, path)
  print("wrote", path)


if __name__ == "__main__":
  import sys
  if "--no-execute" in sys.argv:
    write = functools.partial(write, execute=False)  # noqa: F811
  write("01_quickstart.ipynb", QUICKSTART)
  write("02_parameter_server.ipynb", PARAMETER_SERVER)
  write("03_recovery.ipynb", RECOVERY)
  write("04_federated.ipynb", FEDERATED)
  write("05_compression.ipynb", COMPRESSION)
  write("06_sharding.ipynb", SHARDING)
  write("07_low_communication.ipynb", LOW_COMMUNICATION)
