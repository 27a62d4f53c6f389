"""Datasets, stateless batch samplers and partitions of the training set over workers."""

from pdist.data.datasets import Dataset, load
from pdist.data.partition import WorkerSampler, dirichlet, iid, label_shards
from pdist.data.sampler import batch_indices

__all__ = ["Dataset", "load", "batch_indices", "iid", "label_shards", "dirichlet", "WorkerSampler"]
