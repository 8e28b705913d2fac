"""bot/mlflow.py: MLflow's answers mapped to the error tree (outage vs permanent), the token
as a bearer, and `chatops-bridge check`'s MLflow lines. The real server answering is in
tests/test_mlflow_peer.py; here a loopback server gives the answers MLflow gives on failure."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from bot.__main__ import main
from bot.jobs import outage_of
from bot.mlflow import (
    MlflowNotFound,
    MlflowRefused,
    MlflowRegistry,
    MlflowUnavailable,
    run_facts_from,
)
from bot.settings import Secret
from tests.conftest import make_env
from tests.mlflow_peer.answers import Answers, answering
from tests.mlflow_peer.peer import free_port
from tests.test_model_deploy import model_config


@pytest.fixture
def server() -> Iterator[tuple[str, Answers]]:
    with answering() as found:
        yield found


def error(code: str, message: str) -> bytes:
    return json.dumps({"error_code": code, "message": message}).encode()


@pytest.mark.parametrize(
    ("status", "headers", "body", "raised", "said"),
    [
        (
            404,
            {},
            error("RESOURCE_DOES_NOT_EXIST", "Registered Model with name=x not found"),
            MlflowNotFound,
            "name=x not found",
        ),
        (401, {}, b"", MlflowRefused, "check MLFLOW_TRACKING_TOKEN"),
        (403, {}, error("PERMISSION_DENIED", "no"), MlflowRefused, "MLFLOW_TRACKING_TOKEN"),
        (400, {}, error("INVALID_PARAMETER_VALUE", "bad version"), MlflowRefused, "bad version"),
        (503, {}, b"<html>down</html>", MlflowUnavailable, "answered 503"),
        (500, {}, error("INTERNAL_ERROR", "db"), MlflowUnavailable, "answered 500"),
        (429, {"Retry-After": "7"}, b"", MlflowUnavailable, "answered 429"),
        (200, {}, b"<html>a proxy page</html>", MlflowUnavailable, "not JSON"),
    ],
)
def test_answers_map_to_outage_or_permanent(
    server: tuple[str, Answers], status: int, headers: dict, body: bytes, raised: type, said: str
) -> None:
    url, answers = server
    answers.next = (status, headers, body)
    with pytest.raises(raised) as err:
        MlflowRegistry(url).get_model_version("x", "1")
    assert said in err.value.message
    # The job layer waits an outage out (bot/jobs.py) and gives up on anything else.
    assert (outage_of(err.value) is not None) == (raised is MlflowUnavailable)
    if status == 429:
        assert err.value.retry_at is not None


def test_nobody_listening_is_an_outage() -> None:
    with pytest.raises(MlflowUnavailable) as err:
        MlflowRegistry(f"http://127.0.0.1:{free_port()}", timeout=2).get_run("abc")
    assert outage_of(err.value) == ("MLflow", None)


def test_token_is_sent_as_bearer_and_never_shown(server: tuple[str, Answers]) -> None:
    url, answers = server
    token = "mlflow-token-SECRET-123"
    registry = MlflowRegistry(url, Secret(token))
    answers.next = (200, {}, b"{}")
    registry.set_alias("churn-model", "production", "7")
    (call,) = answers.seen
    assert call["headers"]["Authorization"] == f"Bearer {token}"
    assert call["path"] == "/api/2.0/mlflow/registered-models/alias"
    assert json.loads(call["body"]) == {
        "name": "churn-model",
        "alias": "production",
        "version": "7",
    }
    answers.next = (401, {}, b"")
    with pytest.raises(MlflowRefused) as err:
        registry.ping()
    assert token not in str(err.value) and token not in repr(registry)


def test_latest_value_of_each_metric() -> None:
    run = {
        "info": {"run_id": "r1", "run_name": "train", "status": "FINISHED", "user_id": "alice"},
        "data": {
            "metrics": [
                {"key": "loss", "value": 0.9, "step": 0, "timestamp": 1},
                {"key": "loss", "value": 0.2, "step": 9, "timestamp": 5},
                {"key": "loss", "value": 0.5, "step": 3, "timestamp": 9},
                {"key": "auc", "value": "0.91", "step": 0, "timestamp": 1},
                {"key": "bad", "value": "n/a"},
            ]
        },
    }
    facts = run_facts_from(run)
    assert facts.metrics == {"loss": 0.2, "auc": 0.91}
    assert (facts.run_id, facts.name, facts.user_id) == ("r1", "train", "alice")


# -- chatops-bridge check ---------------------------------------------------------------------
def check(slack: Any, github: Any, database_url: str, tmp_path: Any, capsys: Any, **env: str):
    path = tmp_path / "chatops.yml"
    path.write_text(yaml.safe_dump(model_config()))
    code = main(["check"], env=make_env(slack, github, database_url, path, **env))
    return code, capsys.readouterr().out


def test_check_reports_mlflow_settings_and_a_registry_down(
    slack, github, database_url, tmp_path, capsys
) -> None:
    code, out = check(slack, github, database_url, tmp_path, capsys)
    print(out)
    assert "ok   MLflow: webhooks off; models: churn-model; tracking URI: unset" in out
    assert "warn models: are configured but MLFLOW_WEBHOOK_SECRET is unset" in out
    assert "warn MLFLOW_TRACKING_URI is unset" in out and code == 0
    down = f"http://127.0.0.1:{free_port()}"
    code, out = check(
        slack,
        github,
        database_url,
        tmp_path,
        capsys,
        MLFLOW_WEBHOOK_SECRET="s",
        MLFLOW_TRACKING_URI=down,
        MLFLOW_TRACKING_TOKEN="tok-XYZ",
    )
    print(out)
    assert "webhooks on (POST /mlflow/webhooks)" in out
    assert f"FAIL MLflow: MLflow at {down.removeprefix('http://')} did not answer" in out
    assert code == 1 and "tok-XYZ" not in out


def test_check_reports_a_registry_that_refuses_the_token(
    slack, github, database_url, tmp_path, capsys, server
) -> None:
    url, answers = server
    answers.next = (403, {}, error("PERMISSION_DENIED", "nope"))
    code, out = check(
        slack,
        github,
        database_url,
        tmp_path,
        capsys,
        MLFLOW_WEBHOOK_SECRET="s",
        MLFLOW_TRACKING_URI=url,
        MLFLOW_TRACKING_TOKEN="tok",
    )
    assert "refused the bridge (403): check MLFLOW_TRACKING_TOKEN" in out and code == 1
