"""Builds: turning an upload into a module the workers can run.

Everything a user uploads is untrusted work to build (a `.wasm` to validate and
compile, an ONNX model to plan and pack into a Scailable-ABI module), so builds
live here, apart from the gateway's request handling, and run bounded.
"""
