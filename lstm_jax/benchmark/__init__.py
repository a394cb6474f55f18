"""The throughput benchmark: harness code, kept apart from the library.

`measure` times training passes on the fixed workload W for every strategy and for peers (Flax
`nn.RNN`, PyTorch `nn.LSTM`), and probes the GEMM roofline, memory, page faults and the compile
caches; `report` runs it all and writes benchmark.json and BENCHMARKS.md. The library
(`lstm_jax.*`) never imports this package; experiments/benchmark.py is its command line.
"""
