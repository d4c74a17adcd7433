"""The one error type of checkpoint I/O: its message names the file, tensor or field at fault."""


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match the model config."""
