"""Benchmark of the Trainer against a plain, independently written reference (see bench/README.md)."""
