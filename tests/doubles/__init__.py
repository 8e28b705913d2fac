"""Recording loopback HTTP doubles of Slack's Web API and GitHub's REST API for tests."""

from .github_api import GitHubDouble, Recorded
from .slack_api import Call, SlackDouble, validate_blocks

__all__ = ["Call", "GitHubDouble", "Recorded", "SlackDouble", "validate_blocks"]
