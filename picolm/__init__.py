"""picolm: a small-language-model lab."""

import os

__version__ = "0.1.0"

# OpenMP threads that wait sleep instead of spinning (GNU OpenMP, torch's, spins 300,000 times first by default):
# sharing the cores with another busy process, spinning threads slowed training far beyond the share of the cores
# lost (docs/BENCHMARKS.md, "Training on a busy machine"). libgomp reads this once, when torch is imported; a value
# already in the environment is kept, and waiting changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
