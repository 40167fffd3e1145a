"""Benchmarks (speed and memory ratios measured side by side in one run; tests check
correctness): ``optimizer`` (the step against AdamW, the FLOP floor and peers; ``--procs``
runs ``distributed``), ``loss`` (the loss's memory), ``data`` (preparation throughput),
``gpu_check`` (everything GPU-specific in one command), ``shapes`` (the parameter shapes they
share)."""
