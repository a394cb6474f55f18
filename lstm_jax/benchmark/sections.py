"""Sections of one markdown file owned by different benchmarks.

BENCHMARKS.md is written whole by experiments/benchmark.py; other benchmarks (the data-scale
one) own a section of it between `<!-- section:NAME -->` and `<!-- /section:NAME -->` lines,
which they replace in place and which a rewrite of the file keeps, so neither run drops the
other's figures.
"""

from __future__ import annotations

import os
import re

from lstm_jax.files import write_text_atomically


def _pattern(name: str | None = None) -> re.Pattern:
  n = re.escape(name) if name else r"[\w-]+"
  return re.compile(rf"^<!-- section:({n}) -->\n.*?^<!-- /section:\1 -->\n", re.M | re.S)


def kept(path: str) -> str:
  """The owned sections of the file at `path` (empty if it has none, or does not exist)."""
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    return "".join(m.group(0) for m in _pattern().finditer(f.read()))


def put(path: str, name: str, text: str) -> None:
  """Writes `text` as section `name` of the file at `path`: in place of the old one, or at the
  end."""
  block = f"<!-- section:{name} -->\n{text.rstrip()}\n<!-- /section:{name} -->\n"
  old = open(path).read() if os.path.exists(path) else ""
  new, n = _pattern(name).subn(lambda _: block, old, count=1)
  if not n:
    new = old.rstrip("\n") + ("\n\n" if old else "") + block
  write_text_atomically(path, new)
