"""The one error a model build raises: its message is meant for the uploader."""


class ModelError(ValueError):
    """The model cannot be built; the message says what to change."""


class ModelTooLarge(ModelError):
    """The model is over the memory limit it was built for (`max_bytes`): a server's
    operator can raise that limit, so the server names the setting."""

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed  # bytes: what the model (or its largest part) needs
