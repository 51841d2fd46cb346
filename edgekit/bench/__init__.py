"""Benchmarking: the timer, statistics, budget and baseline gates, and reports."""
