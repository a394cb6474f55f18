"""The experiment runner: everything `experiments/compare_strategies.py` and its siblings run on
top of the library, each module taking an `ml_collections.ConfigDict` (configs/compare.py).

- `config`: every setting, its default and its checks (one line per bad key or value).
- `guards`: the row guards (enough optimizer steps, a step that fits in memory).
- `costs`: the cost model, `num_buckets="auto"` and the recommender.
- `experiment`: the comparison itself (`train_and_evaluate`): data, rows, seeds, resume.
- `report`: the table, report.md, the data files and plots.
- `generate`: text from a trained row's checkpoint.

The library (`lstm_jax.batching`, `.model`, `.train`, ...) never imports this package.
"""
