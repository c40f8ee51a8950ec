"""Loading the protocol's Redis scripts from the `.lua` files beside this module."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

import redis
from redis.commands.core import Script


@cache
def source(name: str) -> str:
    """The text of `<name>.lua`, read once per process."""
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def register(client: redis.Redis, name: str) -> Script:
    """A script object that sends EVALSHA, loading the script once when Redis lacks it."""
    return client.register_script(source(name))
