"""Exception types that the CLI turns into one-line messages."""


class SynfiqaError(Exception):
    """Base class of every error synfiqa raises on purpose (shown without a traceback)."""


class ConfigError(SynfiqaError):
    """A bad config file, key or value."""


class PluginError(SynfiqaError):
    """A plugin could not be registered or a component name is unknown or taken twice."""


class UnknownComponentError(PluginError):
    """No component of this kind has that name."""


class DuplicateComponentError(PluginError):
    """Two plugins registered the same component name."""


class BadInputError(SynfiqaError):
    """An input sample cannot be used; `reason` is a short code recorded in the manifest."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):  # pickled whole (a Ray worker's error reaches the driver), not as Exception(message)
        return type(self), (self.reason, str(self))


class WeightsNotFoundError(SynfiqaError):
    """A model asset is missing or corrupt."""


class OutputConflictError(SynfiqaError):
    """The output folder holds a build made with another config."""


class CheckpointError(SynfiqaError):
    """A model checkpoint does not fit the network meant to load it (the message names the keys)."""


class DataFileError(SynfiqaError):
    """A pairs, embeddings or quality file is malformed or incomplete (the message names the file and line)."""


class OutputWriteError(SynfiqaError):
    """The output could not be written (a full disk, a read-only folder); nothing half-written is left."""


class AssetTransferError(SynfiqaError):
    """A model asset could not be downloaded, packed or unpacked (the message names the file;
    a corrupt one names the expected and the actual sha256, and is not installed)."""


class EngineError(SynfiqaError):
    """A build engine cannot go on: no Ray cluster at the address, a worker that cannot start,
    every worker lost (what was built is kept)."""
