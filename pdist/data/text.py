"""Text for language models, offline: the documentation that ships inside a pinned package.

The corpus is every docstring of at least 200 characters in NumPy's Python sources (numpy is
pinned in requirements.txt, so the text is the same on every machine): ~1.6 MB of English prose
about arrays, with code examples — `numpy_docs` (built in about a second, cached under the cache
directory). Tokens are bytes (vocabulary 256). The split is fixed: the first 90% of the bytes
train, the last 10% validate. Examples are non-overlapping windows of `seq_len` + 1 bytes: x the
first seq_len, y the next byte at each position; in corpus order, so the `contiguous` partition
hands each worker or client one stretch of the text (like LEAF's per-speaker Shakespeare).
"""

from __future__ import annotations

import ast
import os

import numpy as np

from pdist.registry import ConfigError

VOCAB = 256
VALIDATION_FRACTION = 0.1
MIN_DOCSTRING = 200


def numpy_docs() -> bytes:
  """The corpus: NumPy's docstrings (files and nodes in a fixed order), UTF-8."""
  import numpy
  from pdist.data.base import cache_dir
  path = os.path.join(cache_dir(), f"numpy_docs-{numpy.__version__}.txt")
  if os.path.exists(path):
    with open(path, "rb") as f:
      return f.read()
  root = os.path.dirname(numpy.__file__)
  files = []
  for directory, dirs, names in os.walk(root):
    dirs.sort()
    if "tests" in directory.split(os.sep):
      continue
    files += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".py")]
  docs = []
  for file in files:
    try:
      with open(file, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError):
      continue
    for node in ast.walk(tree):
      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
        doc = ast.get_docstring(node)
        if doc and len(doc) >= MIN_DOCSTRING:
          docs.append(doc)
  text = "\n\n".join(docs).encode("utf-8")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "wb") as f:
    f.write(text)
  os.replace(tmp, path)
  return text


def split(corpus: bytes) -> tuple[np.ndarray, np.ndarray]:
  """(train tokens, validation tokens) as int32 arrays."""
  tokens = np.frombuffer(corpus, np.uint8).astype(np.int32)
  cut = int(len(tokens) * (1 - VALIDATION_FRACTION))
  return tokens[:cut], tokens[cut:]


def windows(tokens: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Non-overlapping (x, y) windows: x[i] = tokens[i T : i T + T], y[i] = the same shifted by one."""
  n = (len(tokens) - 1) // seq_len
  x = tokens[:n * seq_len].reshape(n, seq_len)
  y = tokens[1:n * seq_len + 1].reshape(n, seq_len)
  return x, y


def language_dataset(seq_len: int):
  from pdist.data.base import Dataset
  train, valid = split(numpy_docs())
  if not 2 <= seq_len < len(valid):
    raise ConfigError(f"config.data.seq_len={seq_len} must be in [2, {len(valid) - 1}] (the "
                      f"validation split has {len(valid)} bytes)")
  x_train, y_train = windows(train, seq_len)
  x_test, y_test = windows(valid, seq_len)
  return Dataset("numpy_docs", "language", x_train, y_train, x_test, y_test, num_classes=VOCAB,
                 vocab_size=VOCAB)


def unigram_bits(dataset) -> float:
  """Bits per byte of the validation text under the training text's byte frequencies (add-one
  smoothed): the baseline a model that ignores context reaches."""
  counts = np.bincount(dataset.y_train.ravel(), minlength=VOCAB) + 1.0
  p = counts / counts.sum()
  return float(-np.mean(np.log2(p[dataset.y_test.ravel()])))


def decode(tokens) -> str:
  return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")
