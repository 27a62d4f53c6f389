"""Knowledge distillation on MNIST-1D: an MLP student learns from the 1-D CNN's soft targets.

  python -m pdist --config experiments/mnist1d.py:cnn --workdir runs/mnist1d_cnn   # the teacher (make run)
  python -m pdist --config experiments/distill.py --workdir runs/distill           # the student
  python -m pdist --config experiments/distill.py:labels --workdir runs/distill_labels
  python -m pdist.sweep --config experiments/distill.py --workdir runs/distill_sweep

The student is experiments/mnist1d.py's MLP (256, 256; Adam 1e-3; 8000 updates of batch 100);
the teacher the CNN that `make run` trains (test accuracy ~0.90, its params.npz in
runs/mnist1d_cnn). Loss = 0.5 CE(labels) + 0.5 T^2 KL(teacher || student) at T = 4 (Hinton et al.
2015); `labels` trains the same student on the labels alone. Measured numbers in the README.
Presets: labels; tiny (labels; add --config.distill.teacher=DIR to distil).
"""

from pdist.config import apply_presets, base_config

TEACHER = "runs/mnist1d_cnn"


def _labels(c):
  c.distill.teacher = ""
  c.distill.temperature, c.distill.weight = 2.0, 0.5


def _tiny(c):
  """Seconds, for tests; on labels (tests/test_distill.py trains its own teacher)."""
  _labels(c)
  c.data.num_train, c.data.num_test = 400, 200
  c.train.steps, c.train.log_every, c.train.eval_every = 20, 10, 20


PRESETS = {"labels": _labels, "tiny": _tiny}


def get_config(arg=None):
  c = base_config()
  c.data.name = "mnist1d"
  c.data.batch_size = 100
  c.model.name = "mlp"
  c.model.hidden = (256, 256)
  c.optim.name = "adam"
  c.optim.learning_rate = 1e-3
  c.train.steps = 8000
  c.train.log_every = 200
  c.train.eval_every = 1000
  c.distill.teacher = TEACHER
  c.distill.temperature = 4.0
  c.distill.weight = 0.5
  return apply_presets(c, arg, PRESETS, "distill")


def get_hyper(arg=None):
  """The student on labels alone, then distilled at T = 2, 4, 8."""
  del arg
  return ([("labels", {"distill.teacher": "", "distill.temperature": 2.0})]
          + [(f"T{t:g}", {"distill.temperature": float(t)}) for t in (2, 4, 8)])
