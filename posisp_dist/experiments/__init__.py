"""Experiments over trained methods: one method run, seeds, equal-budget comparisons, their aggregates."""
