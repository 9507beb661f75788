"""skllmprob: any LLM that exposes token log-probabilities as a scikit-learn
classifier.

>>> from skllmprob import LogprobClassifier
"""

from .classifier import LogprobClassifier
from .exceptions import (
    BackendError,
    BackendUnavailableError,
    CacheError,
    ConfigurationError,
    InputError,
    LogprobsUnsupportedError,
    PartialResultsError,
    RefitRequiredError,
    RequestRejectedError,
    SkllmprobError,
)
from .scores import TextScores

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CacheError",
    "ConfigurationError",
    "InputError",
    "LogprobClassifier",
    "LogprobsUnsupportedError",
    "PartialResultsError",
    "RefitRequiredError",
    "RequestRejectedError",
    "SkllmprobError",
    "TextScores",
    "__version__",
]
