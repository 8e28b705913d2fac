"""bot/keepalive.py: Slack Web API calls on reused connections, with urllib's contract.

Each behaviour that the bridge relies on is checked on both transports (slack_sdk's own urllib
exchange and the keep-alive one) through SlackOut, so a difference shows as a failing pair.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler

from bot.keepalive import KeepAliveWebClient, is_stale, origin_of
from bot.slack import SlackFailure, SlackOut, make_client
from tests.doubles.slack_api import SlackDouble

TRANSPORTS = ("urllib", "keepalive")


def _out(slack: SlackDouble, transport: str, **kwargs: object) -> SlackOut:
    out = SlackOut(make_client("xoxb-test", slack.url))
    if transport == "urllib":
        client = WebClient(token="xoxb-test", base_url=slack.url, **kwargs)  # type: ignore[arg-type]
        client.retry_handlers = out.client.retry_handlers
        out.client = client
    else:
        assert isinstance(out.client, KeepAliveWebClient)  # what the bridge builds
        for key, value in kwargs.items():
            setattr(out.client, key, value)
    return out


@pytest.fixture
def tls_slack() -> Iterator[SlackDouble]:
    with SlackDouble(tls=True) as double:
        yield double


def test_origin_of_splits_scheme_host_port_and_target() -> None:
    assert origin_of("https://slack.com/api/chat.postMessage") == (
        ("https", "slack.com", 443),
        "/api/chat.postMessage",
    )
    assert origin_of("http://127.0.0.1:8080/api/x?a=1") == (
        ("http", "127.0.0.1", 8080),
        "/api/x?a=1",
    )


def test_calls_reuse_one_connection(slack: SlackDouble) -> None:
    out = _out(slack, "keepalive")
    before = slack.connections_accepted
    stamps = [out.post("C0PROJECT", f"message {i}") for i in range(20)]
    assert len(set(stamps)) == 20
    assert slack.connections_accepted - before == 1
    assert out.client.connections_opened == 1  # type: ignore[attr-defined]


def test_urllib_opens_a_connection_per_call(slack: SlackDouble) -> None:
    """The baseline the keep-alive client replaces (and proof that the count counts)."""
    out = _out(slack, "urllib")
    before = slack.connections_accepted
    for i in range(5):
        out.post("C0PROJECT", f"message {i}")
    assert slack.connections_accepted - before == 5


def test_a_connection_the_server_closed_is_not_reused(slack: SlackDouble) -> None:
    out = _out(slack, "keepalive")
    out.client.retry_handlers = []  # seen before use, not failed and retried
    out.post("C0PROJECT", "first")
    slack.close_connections()  # as Slack ends an idle connection
    slack.wait_for("chat.postMessage")
    ts = out.post("C0PROJECT", "second")
    posted = [c.params["text"] for c in slack.calls_to("chat.postMessage")]
    assert posted == ["first", "second"]  # each sent once: no retry of a delivered call
    assert slack.messages[("C0PROJECT", ts)]["text"] == "second"
    assert out.client.connections_opened == 2  # type: ignore[attr-defined]


def test_is_stale_sees_a_closed_peer() -> None:
    left, right = socket.socketpair()

    class Conn:
        sock = left

    try:
        assert not is_stale(Conn())  # type: ignore[arg-type]
        right.close()
        assert is_stale(Conn())  # type: ignore[arg-type]
    finally:
        left.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_refusal_is_the_same_on_both_transports(slack: SlackDouble, transport: str) -> None:
    out = _out(slack, transport)
    slack.fail_next("chat.postMessage", "channel_not_found")
    with pytest.raises(SlackFailure) as refused:
        out.post("C0PROJECT", "hello")
    assert (refused.value.error, refused.value.status) == ("channel_not_found", 200)
    assert not refused.value.is_outage
    assert out.post("C0PROJECT", "again")  # the connection is still usable


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_outage_answer_is_the_same_on_both_transports(
    slack: SlackDouble, transport: str
) -> None:
    out = _out(slack, transport)
    slack.fail_next("chat.update", "service_unavailable", status=503, retry_after=7)
    with pytest.raises(SlackFailure) as down:
        out.update("C0PROJECT", "1.000001", "hello")
    assert (down.value.error, down.value.status) == ("service_unavailable", 503)
    assert down.value.is_outage


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_short_429_is_waited_out_on_both_transports(slack: SlackDouble, transport: str) -> None:
    out = _out(slack, transport)
    slack.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=0)
    assert out.post("C0PROJECT", "hello")
    assert len(slack.calls_to("chat.postMessage")) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_long_429_fails_with_when_to_come_back(slack: SlackDouble, transport: str) -> None:
    out = _out(slack, transport)
    slack.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=3600)
    with pytest.raises(SlackFailure) as limited:
        out.post("C0PROJECT", "hello")
    assert limited.value.status == 429 and limited.value.retry_at is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_no_server_is_a_connection_failure(transport: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    double = SlackDouble()
    double._base = f"http://127.0.0.1:{port}"
    out = _out(double, transport)
    retries: list[str] = []

    class Counting(ConnectionErrorRetryHandler):
        def prepare_for_next_attempt(self, **kwargs: Any) -> None:
            retries.append(type(kwargs.get("error")).__name__)
            kwargs["state"].next_attempt_requested = True
            kwargs["state"].increment_current_attempt()

    out.client.retry_handlers = [Counting(max_retry_count=2)]
    with pytest.raises(SlackFailure) as failed:
        out.post("C0PROJECT", "hello")
    assert failed.value.error.startswith("connection") and failed.value.is_outage
    assert retries == ["URLError", "URLError"]  # retried as urllib's refusals are


def test_a_timed_out_call_leaves_no_answer_for_the_next_one(slack: SlackDouble) -> None:
    """A late answer on a reused connection would be read as the next call's answer; the
    connection of a failed call is closed instead."""
    out = _out(slack, "keepalive", timeout=1)
    slack.delay_next("chat.postMessage", 1.5)
    with pytest.raises(SlackFailure) as slow:
        out.post("C0PROJECT", "slow")
    assert slow.value.error.startswith("connection")
    ts = out.post("C0PROJECT", "next")
    assert slack.messages[("C0PROJECT", ts)]["text"] == "next"


def test_threads_share_the_pool_and_each_gets_its_own_answer(slack: SlackDouble) -> None:
    out = _out(slack, "keepalive")
    got: dict[str, str] = {}
    lock = threading.Lock()

    def work(t: int) -> None:
        for i in range(15):
            text = f"thread {t} message {i}"
            ts = out.post("C0PROJECT", text)
            with lock:
                got[text] = ts

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(got) == 120
    assert all(slack.messages[("C0PROJECT", ts)]["text"] == text for text, ts in got.items())
    assert out.client.connections_opened <= 8  # type: ignore[attr-defined]


def test_tls_calls_verify_the_certificate_and_reuse_the_session(tls_slack: SlackDouble) -> None:
    assert tls_slack.url.startswith("https://") and tls_slack.ca_file
    trusted = ssl.create_default_context(cafile=tls_slack.ca_file)
    out = _out(tls_slack, "keepalive", ssl=trusted)
    for i in range(5):
        out.post("C0PROJECT", f"message {i}")
    assert tls_slack.connections_accepted == 1

    untrusted = _out(tls_slack, "keepalive")  # the system's CAs do not know the double
    with pytest.raises(SlackFailure) as refused:
        untrusted.post("C0PROJECT", "hello")
    assert refused.value.error.startswith("connection")
    assert len(tls_slack.calls_to("chat.postMessage")) == 5


@pytest.mark.parametrize("status", [200, 404, 503])
def test_the_exchange_keeps_urllibs_contract(slack: SlackDouble, status: int) -> None:
    """The one replaced step, side by side with urllib's: a 2xx answer comes back as a dict,
    any other raises HTTPError whose status, headers and body are readable."""
    from urllib.error import HTTPError
    from urllib.request import Request

    client = KeepAliveWebClient(token="xoxb-test", base_url=slack.url)
    url = slack.url + "chat.postMessage"
    outcomes = []
    for exchange in (
        client._perform_urllib_http_request_internal,
        super(KeepAliveWebClient, client)._perform_urllib_http_request_internal,
    ):
        if status != 200:
            slack.fail_next("chat.postMessage", "boom", status=status, retry_after=5)
        req = Request(
            method="POST",
            url=url,
            data=b'{"channel": "C0PROJECT", "text": "hi"}',
            headers={"Content-Type": "application/json", "Authorization": "Bearer xoxb-test"},
        )
        try:
            answer = exchange(url, req)
        except HTTPError as exc:
            outcomes.append(("HTTPError", exc.code, exc.headers.get("Retry-After"), exc.read()))
        else:
            body = answer["body"]
            outcomes.append(("answer", answer["status"], type(body).__name__, '"ok": true' in body))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == ("answer" if status == 200 else "HTTPError")


# -- one TLS context per process for the clients that stay on urllib ----------------------------


@pytest.fixture
def contexts_built(tls_slack: SlackDouble, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Trust the TLS double (SSL_CERT_FILE, as deployed) and count the TLS contexts built."""
    from bot import keepalive

    monkeypatch.setenv("SSL_CERT_FILE", str(tls_slack.ca_file))
    monkeypatch.setattr(keepalive, "_default_tls", None)  # built again, trusting the double
    built: list[int] = []
    real = ssl.create_default_context

    def counting(*args: Any, **kwargs: Any) -> ssl.SSLContext:
        built.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(ssl, "create_default_context", counting)
    monkeypatch.setattr(ssl, "_create_default_https_context", counting)  # http.client's
    return built


def test_response_url_calls_share_one_tls_context(
    tls_slack: SlackDouble, contexts_built: list[int]
) -> None:
    out = SlackOut(make_client("xoxb-test", tls_slack.url))
    for i in range(4):
        out.respond(tls_slack.response_url(f"k{i}"), f"answer {i}")
    assert len(tls_slack.calls_to("response_url")) == 4  # verified and delivered
    assert len(contexts_built) <= 1  # urllib alone builds one per call


def test_mlflow_calls_share_one_tls_context(
    tls_slack: SlackDouble, contexts_built: list[int]
) -> None:
    from bot.mlflow import MlflowRegistry

    registry = MlflowRegistry(tls_slack.url.removesuffix("/api/"))
    for _ in range(3):
        registry.ping()  # Slack's double answers a JSON object: enough for this
    assert len([c for c in tls_slack.calls if "mlflow" in c.method]) == 3
    assert len(contexts_built) <= 1


def test_a_connection_idle_too_long_is_not_reused(slack: SlackDouble) -> None:
    """One that a NAT may have dropped without a word: closed, and the call opens another."""
    out = _out(slack, "keepalive", max_idle_seconds=0.2)
    out.post("C0PROJECT", "first")
    out.post("C0PROJECT", "soon after")
    assert out.client.connections_opened == 1  # type: ignore[attr-defined]
    time.sleep(0.3)
    out.post("C0PROJECT", "later")
    assert out.client.connections_opened == 2  # type: ignore[attr-defined]


# -- the exchange itself: answers as servers may frame them -------------------------------------


class Scripted:
    """A loopback server that reads each request and answers with the next scripted bytes, sent
    in the pieces given (so an answer may arrive split anywhere); an empty piece closes the
    connection there."""

    def __init__(self, answers: list[list[bytes]]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.accepted = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/api/"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed by the test
            self.accepted += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += conn.recv(65536)
                    self.requests.append(head + b"\r\n\r\n" + body)
                    answer = self.answers.pop(0)
                    for piece in answer:
                        conn.sendall(piece)
                        time.sleep(0.01)
                    if b"" in answer or b"connection: close" in b"".join(answer).lower():
                        break

    def close(self) -> None:
        self.server.close()


def _ok(body: bytes = b'{"ok": true, "ts": "1.000001"}') -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n" + (
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def _call(client: KeepAliveWebClient, url: str) -> dict[str, Any]:
    from urllib.request import Request

    req = Request(method="POST", url=url + "chat.postMessage", data=b'{"text": "hi"}')
    req.add_header("Content-Type", "application/json")
    return client._perform_urllib_http_request_internal(req.full_url, req)


def test_a_chunked_answer_split_anywhere_is_read_whole_and_the_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'7\r\n{"ok": \r\n6\r\ntrue, \r\n11\r\n"ts": "1.000002"}\r\n0\r\n\r\n'
    )
    server = Scripted([[chunked[:20], chunked[20:61], chunked[61:]], [_ok()[:5], _ok()[5:]]])
    client = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
    try:
        assert _call(client, server.url)["body"] == '{"ok": true, "ts": "1.000002"}'
        assert _call(client, server.url)["body"] == '{"ok": true, "ts": "1.000001"}'
        assert client.connections_opened == server.accepted == 1
    finally:
        server.close()


def test_an_answer_that_closes_the_connection_is_not_followed_by_another_call_on_it() -> None:
    closing = _ok().replace(b"200 OK\r\n", b"200 OK\r\nConnection: close\r\n")
    server = Scripted([[closing], [_ok()]])
    client = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
    try:
        assert '"ok": true' in _call(client, server.url)["body"]
        assert '"ok": true' in _call(client, server.url)["body"]
        assert client.connections_opened == server.accepted == 2
    finally:
        server.close()


def test_an_answer_without_a_length_ends_where_the_connection_does() -> None:
    unframed = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{"ok": true}'
    server = Scripted([[unframed, b""], [_ok()]])
    client = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
    try:
        assert _call(client, server.url)["body"] == '{"ok": true}'
        assert '"ok": true' in _call(client, server.url)["body"]  # on a new connection
        assert client.connections_opened == 2
    finally:
        server.close()


@pytest.mark.parametrize(
    "answer",
    [
        [_ok()[:-5], b""],  # cut inside the body
        [b"SMTP ready\r\n\r\n"],  # not HTTP at all
    ],
    ids=["cut short", "not http"],
)
def test_a_broken_answer_is_a_connection_failure_that_is_not_retried_at_once(
    answer: list[bytes],
) -> None:
    """Slack received the call and may have acted on it: SlackOut reports an outage (its job tries
    again later, under the bridge's own rules), slack_sdk does not send it again at once, and the
    connection is not kept."""
    server = Scripted([answer, [_ok()]])
    out = SlackOut(make_client("xoxb-test", server.url))
    try:
        with pytest.raises(SlackFailure) as broken:
            out.post("C0PROJECT", "hello")
        assert broken.value.is_outage and broken.value.error == "connection: BrokenAnswer"
        assert len(server.requests) == 1  # sent once
        client = out.client
        assert isinstance(client, KeepAliveWebClient) and not client.pool.idle.get(
            origin_of(server.url)[0]
        )
    finally:
        server.close()


def test_the_request_is_one_well_formed_http_11_request() -> None:
    from bot.keepalive import request_head

    head = request_head(
        "POST",
        "/api/chat.postMessage",
        "slack.com",
        {"Content-Type": "application/json", "Content-Length": "99", "Host": "evil"},
        14,
    )
    assert head == (
        b"POST /api/chat.postMessage HTTP/1.1\r\nHost: slack.com\r\nAccept-Encoding: identity\r\n"
        b"Content-Type: application/json\r\nContent-Length: 14\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/api/x", {"Authorization": "Bearer t\r\nX-Injected: 1"}),
        ("/api/x", {"Authorization": "Bearer t\nX-Injected: 1"}),
        ("/api/x", {"Bad Name": "v"}),
        ("/api/x", {"Bad:Name": "v"}),
        ("/api/x HTTP/1.1\r\nX: y", {}),
        ("/api/x y", {}),
    ],
)
def test_a_request_that_would_split_is_refused(target: str, headers: dict[str, str]) -> None:
    from bot.keepalive import request_head

    with pytest.raises(ValueError):
        request_head("POST", target, "slack.com", headers, 0)


def test_media_type_reads_the_type_and_charset() -> None:
    from bot.keepalive import media_type

    assert media_type("application/json; charset=utf-8") == ("application/json", "utf-8")
    assert media_type('Text/Plain; Charset="ISO-8859-1"') == ("text/plain", "ISO-8859-1")
    assert media_type("application/gzip") == ("application/gzip", None)
    assert media_type(None) == ("text/plain", None)


def test_the_host_header_names_the_port_only_when_needed_and_brackets_ipv6() -> None:
    from bot.keepalive import host_header

    assert host_header(("https", "slack.com", 443)) == "slack.com"
    assert host_header(("http", "127.0.0.1", 8080)) == "127.0.0.1:8080"
    assert host_header(("http", "::1", 8080)) == "[::1]:8080"
    assert host_header(("https", "::1", 443)) == "[::1]"


def test_an_interim_answer_is_skipped_for_the_final_one() -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
    server = Scripted([[early, _ok()], [_ok()]])
    client = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
    try:
        answer = _call(client, server.url)
        assert answer["status"] == 200 and answer["body"] == '{"ok": true, "ts": "1.000001"}'
        assert answer["headers"].get("Link") is None  # the interim answer's headers are not kept
        assert '"ok": true' in _call(client, server.url)["body"]
        assert client.connections_opened == 1  # the connection is still in step
    finally:
        server.close()


def test_bytes_nobody_asked_for_after_an_answer_end_the_connection() -> None:
    """Whatever follows the answer in the same read is no answer to any request: the next call
    goes on a new connection rather than read it as its own."""
    stray = b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\n" + b'{"ok": false, "x": 1}'
    server = Scripted([[_ok() + stray], [_ok(b'{"ok": true, "ts": "2.000002"}')]])
    client = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
    try:
        assert _call(client, server.url)["body"] == '{"ok": true, "ts": "1.000001"}'
        assert _call(client, server.url)["body"] == '{"ok": true, "ts": "2.000002"}'
        assert client.connections_opened == 2
    finally:
        server.close()


# -- SlackOut's calls past slack_sdk's request building (KeepAliveWebClient.lean_call) ------
def _head_and_body(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    return line, dict(f.split(": ", 1) for f in fields), body


def test_a_lean_call_sends_what_slack_sdk_sends() -> None:
    """The same request line, credentials, content type, user agent and JSON body as
    slack_sdk's api_call, on the keep-alive connection."""
    closing = _ok().replace(b"200 OK\r\n", b"200 OK\r\nConnection: close\r\n")
    server = Scripted([[closing], [_ok()]])  # one connection each
    params = {"channel": "C0PROJECT", "text": "héllo", "blocks": [{"type": "divider"}]}
    try:
        lean = KeepAliveWebClient(token="xoxb-test", base_url=server.url)
        status, _, data = lean.lean_call("chat.postMessage", params)
        assert (status, data) == (200, {"ok": True, "ts": "1.000001"})
        WebClient(token="xoxb-test", base_url=server.url).api_call("chat.postMessage", json=params)
        ours, sdk = (_head_and_body(r) for r in server.requests)
        assert ours[0] == sdk[0] == "POST /api/chat.postMessage HTTP/1.1"
        for name in ("Authorization", "Content-Type", "User-Agent"):
            assert ours[1][name] == sdk[1][name], name
        assert ours[1]["Authorization"] == "Bearer xoxb-test"
        assert ours[2] == sdk[2]
    finally:
        server.close()


def test_a_retry_handler_of_its_own_is_asked_about_every_answer(slack: SlackDouble) -> None:
    """slack_sdk asks its handlers about every answer, a success too; the lean call skips
    that only for the bridge's own two handlers, which never retry one."""
    seen: list[int] = []

    class AgainOnFatal(ConnectionErrorRetryHandler):
        def _can_retry(self, **kwargs: Any) -> bool:
            response = kwargs.get("response")
            if response is None:
                return False
            seen.append(response.status_code)
            return bool(response.body and response.body.get("error") == "fatal_error")

    out = _out(slack, "keepalive")
    out.client.retry_handlers = [AgainOnFatal(max_retry_count=1)]
    slack.fail_next("chat.postMessage", "fatal_error")  # HTTP 200, ok false
    assert out.post("C0PROJECT", "hello")
    assert seen == [200]  # the fatal_error answer (the handler has one retry: then it is spent)
    assert len([c for c in slack.calls if c.method == "chat.postMessage"]) == 2


def test_a_server_error_is_offered_to_the_retry_handlers(slack: SlackDouble) -> None:
    from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

    out = _out(slack, "keepalive")
    out.client.retry_handlers = [ServerErrorRetryHandler(max_retry_count=1)]
    slack.fail_next("chat.postMessage", "internal_error", status=503)
    assert out.post("C0PROJECT", "hello")  # retried once, then posted
    slack.fail_next("chat.postMessage", "internal_error", status=503, times=2)
    with pytest.raises(SlackFailure) as failed:
        out.post("C0PROJECT", "hello")
    assert (failed.value.status, failed.value.error, failed.value.is_outage) == (
        503,
        "internal_error",
        True,
    )


def test_behind_a_proxy_calls_go_through_it() -> None:
    """HTTPS_PROXY (slack_sdk's `proxy`): SlackOut's calls go through slack_sdk's urllib path,
    which asks the proxy for the absolute URL; neither the pool nor the lean call connects to
    Slack directly."""
    proxy = Scripted([[_ok()]])
    try:
        client = make_client("xoxb-test", "http://slack.invalid/api/")
        client.proxy = proxy.url.removesuffix("/api/")
        assert SlackOut(client).post("C0PROJECT", "hello") == "1.000001"
        (request,) = proxy.requests
        assert request.startswith(b"POST http://slack.invalid/api/chat.postMessage HTTP/1.1")
        assert isinstance(client, KeepAliveWebClient) and client.connections_opened == 0
    finally:
        proxy.close()
