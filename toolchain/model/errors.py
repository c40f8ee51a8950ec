"""The one error a model build raises: its message is meant for the uploader."""


class ModelError(ValueError):
    """The model cannot be built; the message says what to change."""
