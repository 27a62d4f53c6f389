"""Errors that stop a run for a reason other than bad input (which is registry.ConfigError)."""


class TrainingError(RuntimeError):
  """Training cannot go on; the message says where and why (exit status 3)."""
