"""Knowledge distillation (Hinton et al. 2015): train a student on a mix of the labels and a
finished teacher's softened predictions.

    --config.distill.teacher=runs/teacher --config.distill.temperature=4 --config.distill.weight=0.7

The teacher is a finished pdist workdir: its config.json (the model) and its params.npz (written
by `--config.train.save_params=true`), read by `artifacts.load_teacher` and handed to
`tasks.build`. Per example,

    loss = (1 - weight) CE(labels, z_s) + weight T^2 KL(softmax(z_t / T) || softmax(z_s / T))

with z_s, z_t the student's and teacher's logits (for a language model: per position, averaged
over the sequence). The T^2 keeps the soft term's gradient on the scale of the hard one's
(its gradient in z_s is T (softmax(z_s / T) - softmax(z_t / T))). Evaluation stays plain
cross-entropy on the held-out labels. The teacher runs inside the student's compiled step, on the
same batch, so every strategy distils unchanged.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from pdist.registry import ConfigError, check_unused_at_default


def distill_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.teacher = ""          # a finished pdist workdir with params.npz; "" = no distillation
  c.temperature = 2.0     # T: both distributions are softened by it
  c.weight = 0.5          # share of the soft (teacher) term in the loss
  return c


def validate(config) -> None:
  d = config.distill
  if not d.teacher:
    check_unused_at_default(config, "distill", distill_config(), "teacher",
                            "set config.distill.teacher to a finished workdir")
    return
  if config.privacy.mechanism != "none":
    raise ConfigError("config.distill with config.privacy: the teacher is not private (it was "
                      "trained on the data without the privacy accounting), so the student's "
                      "epsilon would not hold; distil without privacy")
  if not d.temperature > 0:
    raise ConfigError(f"config.distill.temperature must be positive, got {d.temperature}")
  if not 0 <= d.weight <= 1:
    raise ConfigError(f"config.distill.weight must be in [0, 1], got {d.weight}")


def soft_loss(student_logits, teacher_logits, temperature: float):
  """T^2 KL(softmax(z_t / T) || softmax(z_s / T)) over the last axis (per example / position)."""
  t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
  s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
  return temperature ** 2 * jnp.sum(jnp.exp(t) * (t - s), axis=-1)
