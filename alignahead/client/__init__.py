"""A Python client of the alignahead job service (on httpx; never imports the service itself).

from alignahead.client import Client

client = Client()  # $ALIGNAHEAD_URL (default http://127.0.0.1:8000) and $ALIGNAHEAD_API_KEY
job = client.submit("examples/synthetic-mixed.yaml")
job.wait()  # a progress bar of epochs with the best validation scores so far
student = job.load_student()  # the best checkpoint of student 0, sha256-verified
"""

from alignahead.client.client import Client, spec_body
from alignahead.client.errors import (
    AlignaheadError,
    APIError,
    BadRequest,
    ChecksumMismatch,
    Conflict,
    JobFailed,
    NotFound,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    TooLarge,
    Unauthorized,
    ValidationFailed,
)
from alignahead.client.events import Event
from alignahead.client.jobs import Job, MetricRows
from alignahead.client.studies import Study
from alignahead.client.transport import RetryPolicy

__all__ = [
    "APIError",
    "AlignaheadError",
    "BadRequest",
    "ChecksumMismatch",
    "Client",
    "Conflict",
    "Event",
    "Job",
    "JobFailed",
    "MetricRows",
    "NotFound",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "ServiceUnavailable",
    "Study",
    "TooLarge",
    "Unauthorized",
    "ValidationFailed",
    "spec_body",
]
