"""Sections of one markdown file owned by different benchmarks.

BENCHMARKS.md is written whole by experiments/benchmark.py; other benchmarks (the data-scale
one) own a section of it between `<!-- section:NAME -->` and `<!-- /section:NAME -->` lines,
which they replace in place and which a rewrite of the file keeps, so neither run drops the
other's figures.
"""

from __future__ import annotations

import os
import re

from lstm_jax.files import write_json_atomically, write_text_atomically


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


def cpu_words(v: dict) -> str:
  """The CPU as a report names it: model, cores, and the bfloat16 / AMX flags that decide
  whether bfloat16 matmuls pay off on it (results from before the model was recorded say so)."""
  low_precision = [f for f in v.get("cpu_flags", []) if "bf16" in f or "amx" in f]
  return f"{v.get('cpu_model', 'CPU model not recorded')}, {v['cpu_count']} cores" + (
    f" ({', '.join(low_precision)})" if low_precision else ""
  )


def write_report(
  out_md: str,
  result: dict,
  title: str,
  body: str,
  *,
  json_name: str,
  summary: str = "",
  section: str = "",
) -> str:
  """A benchmark's files: `result` as `json_name` beside `out_md`, "# title" and `body` as
  `out_md`, and with `summary` the same report as section `section` of that file (one heading
  level down, linking to `out_md`). Returns the markdown."""
  out_json = os.path.join(os.path.dirname(os.path.abspath(out_md)), json_name)
  write_json_atomically(out_json, result, indent=1)
  text = f"# {title}\n\n{body}"
  write_text_atomically(out_md, text)
  if summary:
    link = os.path.relpath(os.path.abspath(out_md), os.path.dirname(os.path.abspath(summary)))
    put(summary, section, f"#{text}\nFiles: [{link}]({link}).\n")
  return text
