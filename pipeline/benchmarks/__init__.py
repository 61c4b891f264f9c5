"""Benchmarks behind `posfeed bench <name>`, each timed side by side with its baseline in one run."""
