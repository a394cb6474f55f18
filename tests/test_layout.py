"""The package's layers (docs/layout.md): a module imports only from its own layer or the layers
above it, and the library never imports the benchmark harness."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lstm_jax"

LAYERS = (
  ("preemption", "errors", "files", "progress", "metric_writers"),  # shared by all
  ("recurrence", "cudnn", "readout", "backend", "layers", "model"),  # model core
  (
    "data",
    "store_writer",
    "store",
    "normalization",
    "tasks",
    "columnar",
    "labelled_files",
    "sources",
    "prepare",
    "planning",
    "plans",
    "batching",
  ),  # data and batching
  (
    "host",
    "environment",
    "compiles",
    "workdir",
    "checkpoint",
    "sharding",
    "prefetch",
    "train",
    "loop",
    "evaluation",
  ),  # training
  ("convert", "streaming", "nnx_model", "baselines", "interop"),  # tools
)
# the runner's package (lstm_jax/runner/): it may import the library, never the reverse
RUNNER = (
  "config",
  "guards",
  "costs",
  "reading",
  "plots",
  "report",
  "writers",
  "data",
  "build",
  "precision",
  "recommend",
  "row",
  "experiment",
  "generate",
)
ORDER = [m for layer in LAYERS for m in layer]  # within a layer, listed in dependency order


def _imports(path: Path, package: str = "lstm_jax") -> set[str]:
  """The modules of `package` that `path` imports (`from package import x`, `from package.x
  import y`, `import package.x`)."""
  out, depth = set(), package.count(".") + 1
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == package:
        out |= {a.name for a in node.names}
      elif node.module.startswith(package + "."):
        out.add(node.module.split(".")[depth])
    elif isinstance(node, ast.Import):
      out |= {a.name.split(".")[depth] for a in node.names if a.name.startswith(package + ".")}
  return out


def test_every_library_module_has_a_layer():
  modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
  assert modules == set(ORDER), modules ^ set(ORDER)
  runner = {p.stem for p in (PACKAGE / "runner").glob("*.py")} - {"__init__"}
  assert runner == set(RUNNER), runner ^ set(RUNNER)


def test_modules_import_only_from_earlier_layers_never_the_runner_or_the_benchmark():
  for name in ORDER:
    for dep in _imports(PACKAGE / f"{name}.py"):
      assert dep not in ("benchmark", "runner"), f"lstm_jax.{name} imports lstm_jax.{dep}"
      assert ORDER.index(dep) < ORDER.index(name), f"lstm_jax.{name} imports lstm_jax.{dep}"


def test_the_runner_imports_the_library_and_its_own_earlier_modules_only():
  for k, name in enumerate(RUNNER):
    for dep in _imports(PACKAGE / "runner" / f"{name}.py"):
      assert dep != "benchmark", f"lstm_jax.runner.{name} imports the benchmark harness"
      if dep == "runner":
        continue  # `from lstm_jax.runner import x`: checked below
      assert dep in ORDER, f"lstm_jax.runner.{name} imports lstm_jax.{dep}"
    for dep in _imports(PACKAGE / "runner" / f"{name}.py", "lstm_jax.runner"):
      assert RUNNER.index(dep) < k, f"lstm_jax.runner.{name} imports lstm_jax.runner.{dep}"


def test_the_index_exports_the_research_names_lazily():
  """`from lstm_jax import Bucket, SequenceModel, fit` (etc.): every name in __all__ resolves to
  the object its module defines, no name of the runner is among them, and `import lstm_jax`
  itself imports neither JAX nor numpy (PEP 562: a name loads on first use)."""
  import importlib
  import subprocess
  import sys

  import lstm_jax
  from lstm_jax import batching, loop, model

  assert lstm_jax.Bucket is batching.Bucket and lstm_jax.fit is loop.fit
  assert lstm_jax.RNN is model.LSTM and lstm_jax.BidirectionalRNN is model.BidirectionalLSTM
  # what the README's first example imports, and the base class a strategy of one's own needs
  assert {"tasks", "Strategy"} <= set(lstm_jax.__all__)
  assert issubclass(lstm_jax.Bucket, lstm_jax.Strategy) and lstm_jax.tasks.adding_problem
  for name in lstm_jax.__all__:
    module, attr = lstm_jax._EXPORTS[name]
    assert module in ORDER, f"{name} comes from the runner"
    obj = getattr(lstm_jax, name)
    want = getattr(importlib.import_module(f"lstm_jax.{module}"), attr) if attr else None
    assert obj is (want or importlib.import_module(f"lstm_jax.{module}")), name
  assert set(lstm_jax.__all__) <= set(dir(lstm_jax))
  try:
    lstm_jax.no_such_name
  except AttributeError as e:
    assert "no_such_name" in str(e)
  else:
    raise AssertionError("an unknown name must be an AttributeError")
  code = "import sys, lstm_jax; print(sorted({'jax', 'numpy', 'flax'} & set(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]", out.stdout
  assert (PACKAGE / "py.typed").exists()


def test_docs_api_md_is_current():
  import api_reference

  doc = PACKAGE.parent / "docs" / "api.md"
  assert doc.read_text() == api_reference.render(), (
    "docs/api.md is stale: run `python tests/api_reference.py > docs/api.md`"
  )


def test_every_exported_name_documents_its_arguments():
  """Google-style sections on the index's names: every class and function says `Args`, and
  every function what it `Returns` (or `Yields`); the exceptions and modules are exempt."""
  import inspect

  import lstm_jax

  missing = []
  for name in lstm_jax.__all__:
    obj = getattr(lstm_jax, name)
    if inspect.ismodule(obj) or (inspect.isclass(obj) and issubclass(obj, BaseException)):
      continue
    doc = inspect.getdoc(obj) or ""
    if "Args" not in doc:
      missing.append(f"{name}: Args")
    if inspect.isfunction(obj) and "Returns:" not in doc and "Yields:" not in doc:
      missing.append(f"{name}: Returns")
  assert not missing, missing


# What may take more than two arguments by position, and why.
POSITIONAL_EXCEPTIONS = {
  "RaggedDataset": 3,  # a dataset's three arrays: values, lengths, targets
  "Batch": 6,  # the batch contract's record, built by the strategies, read by users
  "create_train_state": 3,  # model, optimizer, data: what every train state needs
  "write_store": 3,  # where, the records and what they are (StoreSchema): what every store needs
}


def test_exported_callables_take_settings_by_keyword():
  """Every name the index exports takes at most its first argument or two by position (the
  exceptions above say why); the settings after them are keyword-only, so a call reads what it
  sets and a new setting cannot shift another's position."""
  import inspect

  import lstm_jax

  over = []
  for name in lstm_jax.__all__:
    obj = getattr(lstm_jax, name)
    if inspect.ismodule(obj) or (inspect.isclass(obj) and issubclass(obj, BaseException)):
      continue
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [
      p.name
      for p in inspect.signature(obj).parameters.values()
      if p.kind in kinds and p.name not in ("self", "parent", "name")
    ]
    if len(positional) > POSITIONAL_EXCEPTIONS.get(name, 2):
      over.append(f"{name}{tuple(positional)}")
  assert not over, over
