"""Each bad input in tests/bad_inputs.py raises its error with a message naming the problem and
the fix, and docs/errors.md (the table users read) is what those cases print today."""

import re
from pathlib import Path

import bad_inputs
import pytest

# The damaged-checkpoint case: orbax's concurrent reads leave unretrieved futures behind, which
# Python reports at garbage collection (see tests/test_checkpoint.py).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[c.what for c in bad_inputs.CASES])
def test_bad_input_raises_a_clear_error(case):
  e = bad_inputs.raised(case)
  assert isinstance(e, (ValueError, FloatingPointError))
  assert re.search(case.pattern, str(e)), str(e)


def test_docs_errors_md_is_current():
  doc = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
  assert doc.read_text() == bad_inputs.render(), (
    "docs/errors.md is stale: run `python tests/bad_inputs.py > docs/errors.md`"
  )
