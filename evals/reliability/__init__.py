"""Reliability harnesses: crash safety, tenant isolation, server faults, load (issue 8)."""
