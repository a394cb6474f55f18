"""Every python block of the README and docs/ runs: each file's blocks in order, in one
namespace (as a reader pastes them), in a scratch directory, with the data and epochs shrunk by
the substitutions below so that the suite stays short (a block the README holds too runs
there once). A block the page marks
`<!-- docs-test: skip (why) -->` (a signature sketch) is left out; docs/api.md holds signatures
only. Printed numbers are not compared: the blocks' prose gives full-size output."""

import contextlib
import io
import os
import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(
  str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md") if p.name != "api.md"
)
# page -> [(text in a block, what runs instead)]: smaller data and fewer epochs, same code
SHRINK = {
  "README.md": [
    ("adding_problem(4000,", "adding_problem(400,"),
    ("running_parity(2000,", "running_parity(300,"),
    ("epochs=20", "epochs=1"),
    ("epochs=10", "epochs=1"),
    ("Pad(eval_ds, batch_size=128)", "Pad(eval_ds, batch_size=16)"),
    ("Pad(parity_eval, batch_size=100)", "Pad(parity_eval, batch_size=16)"),
  ],
  "docs/research.md": [
    ("adding_problem(4000,", "adding_problem(400,"),
    ("for epoch in range(20):", "for epoch in range(1):"),
  ],
  "docs/checkpoints.md": [
    ("adding_problem(4000,", "adding_problem(400,"),
    ("epochs=20", "epochs=1"),
  ],
  "docs/data.md": [("size=500", "size=40")],
}
# page -> code run before its blocks: what the page assumes its reader already has
PRELUDE = {
  "docs/store.md": """
import optax
from lstm_jax import SequenceModel, create_train_state, store as _store, next_token_dataset
import numpy as _np
_rng = _np.random.default_rng(0)
_docs = [_rng.integers(0, 256, size=n) for n in _rng.integers(20, 300, size=60)]
_ds = next_token_dataset(_docs, vocab_size=256)
_store.from_dataset(_ds, "stores/corpus")
state = create_train_state(SequenceModel(hidden_size=8, num_outputs=256, vocab_size=256),
                           optax.adam(1e-3), _ds)
""",
}


def blocks(page: str) -> list[str]:
  """The page's python blocks, in order, without those marked to skip."""
  text = (ROOT / page).read_text()
  out = []
  pattern = r"(<!-- docs-test: skip[^>]*-->\n)?( *)```python\n(.*?)\n *```"
  for m in re.finditer(pattern, text, re.S):
    if not m.group(1):
      out.append(textwrap.dedent(m.group(3)))
  return out


def test_every_page_is_covered_and_every_substitution_applies():
  """A substitution that no longer matches (the page changed) would silently run the full
  size: each must find its text."""
  assert set(SHRINK) | set(PRELUDE) <= set(PAGES)
  for page, subs in SHRINK.items():
    code = "\n".join(blocks(page))
    for old, _ in subs:
      assert old in code, f"{page}: the substitution {old!r} finds nothing; update SHRINK"


@pytest.mark.parametrize("page", [p for p in PAGES if blocks(p)])
def test_the_page_s_python_blocks_run(page, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace: dict = {"__name__": "__docs__"}
  if page in PRELUDE:
    exec(compile(PRELUDE[page], f"{page}:prelude", "exec"), namespace)
  in_readme = set(blocks("README.md")) if page != "README.md" else set()
  for i, code in enumerate(blocks(page)):
    if code in in_readme:
      continue  # the README's own block, run there
    for old, new in SHRINK.get(page, []):
      code = code.replace(old, new)
    with contextlib.redirect_stdout(io.StringIO()):
      try:
        exec(compile(code, f"{page}: python block {i + 1}", "exec"), namespace)
      except Exception as e:
        raise AssertionError(f"{page}: python block {i + 1} failed: {e!r}\n{code}") from e
  assert os.getcwd() == str(tmp_path)


def test_every_relative_link_in_the_docs_resolves():
  """The README and every docs/ page link to files of the repository (reports, docs pages,
  code); each relative link must name a file or folder that exists."""
  broken = []
  for page in PAGES + ["docs/api.md"]:
    base = (ROOT / page).parent
    for m in re.finditer(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / page).read_text()):
      target = m.group(1)
      if not target.startswith(("http://", "https://", "mailto:")) and not (base / target).exists():
        broken.append(f"{page}: {target}")
  assert not broken, broken
