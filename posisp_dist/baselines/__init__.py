"""Baselines: fixed reference renderings and search over pipelines."""
