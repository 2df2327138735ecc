"""Compute-driver conformance suite (see conftest.py)."""
