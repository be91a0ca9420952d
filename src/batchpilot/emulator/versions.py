"""The Batch REST API versions the emulator answers, and where an older one has another shape.

The list follows Batch's versioning page (learn.microsoft.com/rest/api/batchservice/batch-service-rest-api-
versioning). Any other `api-version` is refused as the service refuses a query parameter it cannot take:
400 InvalidQueryParameterValue naming `api-version` (what the service answered for an api-version it did
not serve, Azure/azure-sdk-for-python#19224; the docs also list UnsupportedRequestVersion, "The specified
request version is not supported", without saying when it is used).
"""

from __future__ import annotations

from .state import ServiceError

API_VERSIONS = frozenset(
    {
        "2016-07-01.3.1",
        "2017-01-01.4.0",
        "2017-05-01.5.0",
        "2017-06-01.5.1",
        "2017-09-01.6.0",
        "2018-03-01.6.1",
        "2018-08-01.7.0",
        "2018-12-01.8.0",  # azure-batch 6.0, the tutorial's sample
        "2019-06-01.9.0",
        "2019-08-01.10.0",
        "2020-03-01.11.0",
        "2020-09-01.12.0",
        "2021-06-01.14.0",
        "2022-01-01.15.0",
        "2022-10-01.16.0",
        "2023-05-01.17.0",  # the SDK's recordings
        "2023-11-01.18.0",
        "2024-02-01.19.0",
        "2024-07-01.20.0",
        "2025-06-01",  # azure-batch 15.x
    }
)
# Get Task Counts answered a flat TaskCounts object until 2020-09-01.12.0 brought TaskCountsResult
# ({"taskCounts": ..., "taskSlotCounts": ...}); azure-batch 6.0 reads the flat one.
_SLOT_COUNTS_SINCE = "2020-09-01.12.0"


class InvalidQueryParameter(ServiceError):
    """400 InvalidQueryParameterValue with the `values` Batch adds: the parameter, its value and why."""

    def __init__(self, name: str, value: str, reason: str) -> None:
        super().__init__(
            400,
            "InvalidQueryParameterValue",
            "Value for one of the query parameters specified in the request URI is invalid.",
        )
        self.values = (("QueryParameterName", name), ("QueryParameterValue", value[:256]), ("Reason", reason))


def check_api_version(value: str) -> str:
    if value not in API_VERSIONS:
        raise InvalidQueryParameter("api-version", value, "The specified api-version is not supported.")
    return value


def flat_task_counts(api_version: str) -> bool:
    """Whether Get Task Counts answers in the flat shape of versions before 2020-09-01.12.0."""
    return _date(api_version) < _date(_SLOT_COUNTS_SINCE)


def _date(api_version: str) -> str:
    return api_version[:10]
