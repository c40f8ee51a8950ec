"""Compute nodes: Celery tasks and the wasm runtime that executes modules."""
