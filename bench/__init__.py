"""Benchmarks (issue 8): ``make bench`` runs them all; ``bench/README.md`` explains each scenario."""
