"""The GitHub client's error tree (bot/github.py raises them; pure, no PyGithub), so handlers
can word failures for people::

    GitHubError
    ├── NotInstalled       the App is not installed on the repository
    ├── NotFound           no such pull request / run / user
    ├── PermissionDenied   the App lacks a permission (403 "Resource not accessible")
    ├── ValidationFailed   GitHub refused the input (422)
    └── Retryable
        ├── RateLimited    rate limit spent; retry_at says when it resets
        └── Unavailable    5xx, timeout, connection refused
"""

from __future__ import annotations


class GitHubError(Exception):
    """A GitHub failure described in words a Slack user can act on."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class NotInstalled(GitHubError): ...


class NotFound(GitHubError): ...


class PermissionDenied(GitHubError): ...


class ValidationFailed(GitHubError): ...


class Retryable(GitHubError):
    retry_at: float | None = None


class RateLimited(Retryable):
    def __init__(self, message: str, *, retry_at: float, status: int | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_at = retry_at


class Unavailable(Retryable): ...
