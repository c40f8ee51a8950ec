"""The queue protocol: how a task is enqueued, claimed, finished, resent and swept.

Every step that changes a task is one Redis script, kept beside this module as a
`.lua` file whose header names its keys and arguments; `lua.py` loads them.
"""
