"""Benchmarks behind `posisp bench ...` (figures live in bench/README.md, not in timed tests)."""
