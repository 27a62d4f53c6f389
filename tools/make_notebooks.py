"""Writes the notebooks under notebooks/ from the cell sources below (unexecuted).

Notebooks hold no logic of their own: they call pdist's API. tests/test_notebooks.py executes them.
  python tools/make_notebooks.py
"""

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
    new_markdown_cell("## MNIST-1D with a small 1-D CNN (about 20 s on 2 CPU cores)"),
    new_code_cell(
        "cnn_cfg = config_lib.load(os.path.join(ROOT, 'experiments/mnist1d.py') + ':cnn',\n"
        "                          ['--config.train.steps=1500', '--config.train.eval_every=250',\n"
        "                           '--config.train.log_every=250', '--config.train.progress=False'])\n"
        "cnn = train.run(cnn_cfg, os.path.join(workdir, 'cnn'))\n"
        "print({k: round(v, 4) for k, v in cnn.summary.items() if isinstance(v, float)})"),
    new_code_cell(
        "fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))\n"
        "axes[0].semilogy(steps, measured, 'o', label='pdist')\n"
        "axes[0].semilogy(steps, closed, '-', label='closed form')\n"
        "axes[0].set(title='seed quadratic', xlabel='updates', ylabel='loss'); axes[0].legend()\n"
        "rows = metrics.read(os.path.join(workdir, 'cnn'))\n"
        "axes[1].plot([r['step'] for r in rows], [r['eval_accuracy'] for r in rows], 'o-')\n"
        "axes[1].set(title='MNIST-1D CNN', xlabel='updates', ylabel='test accuracy')\n"
        "plt.tight_layout(); plt.show()"),
]


def write(name, cells):
  nb = new_notebook(cells=cells, metadata={
      "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
      "language_info": {"name": "python"}})
  path = os.path.join(ROOT, "notebooks", name)
  nbformat.write(nb, path)
  print("wrote", path)


if __name__ == "__main__":
  write("01_quickstart.ipynb", QUICKSTART)
