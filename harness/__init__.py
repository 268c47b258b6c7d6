"""edgebench: on-device LLM benchmarking harness (package `harness`)."""

__version__ = "0.1.0"
