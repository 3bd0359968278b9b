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


class SourceChangedError(DataSourceError):
    """A source file changed between two reads of one ingest (its size or modification time)."""


class DataValidationError(PipelineError):
    """A snapshot failed a severe data-validation check."""


class TrainingError(PipelineError):
    """Training could not run or produced no usable model."""


class ExportError(PipelineError):
    """A model could not be exported or published."""


class InfraValidationError(PipelineError):
    """The candidate failed to load, timed out or answered wrongly in a serving process."""


class PromotionError(PipelineError):
    """A promotion step failed (serving refused the config, or a smoke test failed)."""


class ServingUnavailableError(Exception):
    """The serving endpoint did not answer (down or restarting).

    Not a `PipelineError`: the cause is transient, so orchestrators retry the step.
    """
