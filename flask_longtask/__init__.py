"""Flask-LongTask: run long work off the request, with progress, cancellation and memoization."""

from __future__ import annotations

from .exceptions import JobCancelledError as JobCancelledError
from .exceptions import JobFailedError as JobFailedError
from .exceptions import JobNotFoundError as JobNotFoundError
from .exceptions import JobTimeoutError as JobTimeoutError
from .exceptions import LongTaskError as LongTaskError
from .exceptions import OutcomeNotStoredError as OutcomeNotStoredError
from .exceptions import QueueFullError as QueueFullError
from .exceptions import TamperedValueError as TamperedValueError
from .exceptions import TimeLimitExceeded as TimeLimitExceeded
from .exceptions import UnknownSettingWarning as UnknownSettingWarning
from .extension import LongTask as LongTask
from .job import Job as Job
from .job import JobStatus as JobStatus
from .task import Task as Task
from .worker import current_job as current_job

__version__ = "0.1.0"
