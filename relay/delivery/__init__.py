"""Delivery: fan-out, claim, send and record, and the worker that runs them."""
