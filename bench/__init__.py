"""`python -m bench`: the figures behind wasmq's performance claims, in one run."""
