"""The package's layers (README "Layout"): a module imports only from its own layer or the layers
above it, and the library never imports the benchmark harness."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lstm_jax"

LAYERS = (
  ("preemption", "errors", "files"),  # shared by all
  ("recurrence", "model"),  # model core
  ("data", "store", "tasks", "sources", "batching"),  # data and batching
  (
    "host",
    "environment",
    "compiles",
    "workdir",
    "checkpoint",
    "sharding",
    "prefetch",
    "train",
  ),  # training
  ("convert", "streaming", "generate", "nnx_model"),  # tools
  ("config", "guards", "baselines", "report", "costs", "experiment"),  # runner
)
ORDER = [m for layer in LAYERS for m in layer]  # within a layer, listed in dependency order


def _imports(path: Path) -> set[str]:
  """The lstm_jax modules `path` imports (`from lstm_jax import x`, `from lstm_jax.x import y`)."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "lstm_jax":
        out |= {a.name for a in node.names}
      elif node.module.startswith("lstm_jax."):
        out.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      out |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lstm_jax.")}
  return out


def test_every_library_module_has_a_layer():
  modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
  assert modules == set(ORDER), modules ^ set(ORDER)


def test_modules_import_only_from_earlier_layers_and_never_the_benchmark():
  for name in ORDER:
    for dep in _imports(PACKAGE / f"{name}.py"):
      assert dep != "benchmark", f"lstm_jax.{name} imports the benchmark harness"
      assert ORDER.index(dep) < ORDER.index(name), f"lstm_jax.{name} imports lstm_jax.{dep}"
