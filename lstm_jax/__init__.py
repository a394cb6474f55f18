"""lstm_jax: LSTMs on variable-length sequences, with bucketing, masked padding, packing and
stateful truncated BPTT behind one batch contract, exact to float32 rounding, compiles counted."""

__version__ = "0.1.0"
