"""Exceptions raised by pipeline stages.

Every stage failure the user can fix is a `PipelineError` whose message names
the problem (the file, the field, the check and its numbers). The CLI prints the
message without a traceback and exits non-zero.
"""


class PipelineError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(PipelineError):
    """A configuration value is missing, of the wrong type or out of range."""


class DataSourceError(PipelineError):
    """A data source cannot be read: missing, empty, corrupt or malformed."""


class DataValidationError(PipelineError):
    """A snapshot failed a severe data-validation check."""


class TrainingError(PipelineError):
    """Training could not run or produced no usable model."""


class ExportError(PipelineError):
    """A model could not be exported or published."""
