"""Local stand-ins for Lakera Guard and for an LLM provider, on loopback.

Shipped for the tests, the demo and the benchmark, so that nothing needs a Lakera account or a
model. They are not a replacement for Lakera Guard: they flag a few fixed trigger phrases.
"""
