"""Reliability: the mixed load, floods, expiry churn and faults behind `make soak` and its short tests."""
