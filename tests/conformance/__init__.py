"""Ports of Ray 2.x core tests, run by tests/test_conformance.py (see docs/conformance.md)."""
