"""Query parameters (SPEC section 3): the OpenAPI document declares exactly what the code enforces.

For every operation of `/openapi.json` and every parameter it declares, values just inside the
declared range (and the declared default) are answered, values just outside it are 400
`invalid_parameter` naming the parameter, an undeclared parameter is 400 `unknown_parameter`,
and the key is checked first (401 before any 400). The values are derived from the document,
so a range changed in one place and not the other fails here. Then the inputs of issue 22 that
answered 503 "retry" instead of 400, one by one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from headway_collector.app import openapi
from headway_collector.config import loads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.collector.helpers import PINNED, PINNED_US, at_event, body, event, headers, read_headers, send_at
from tests.conftest import READ_KEY, WRITE_KEY, LiveCollector, asgi_collector, config_text, postgres_schema

DOCUMENT = openapi()
OPERATIONS = [(path, method) for path, methods in DOCUMENT["paths"].items() for method in methods]
AT = PINNED.isoformat()
# Values that the model and the data below make valid, for parameters the model gives meaning to.
VALID = {"subject": "u1", "user_id": "u1", "account_id": "acme-co", "outcome": "onboarding_prompts",
         "stage": "trial", "milestone": "daily_habit", "key": READ_KEY, "horizon": "30d"}
# What a request carries besides the parameter under test, so that only that parameter decides.
BASE: dict[str, dict[str, str]] = {"/v1/scores": {"user_id": "u1"},
                                   "/v1/insights/backtest": {"every": "36500d"}}  # few snapshots to year 9999
INSTEAD = {("/v1/scores", "account_id"): "user_id"}  # exactly one of the two
PAIRED = {("/v1/growth", "from"): "to", ("/v1/growth", "to"): "from"}  # a period range of one instant
# Other parameters that a value needs beside it, by (path, name) or (path, name, value).
ALONGSIDE: dict[tuple[str, ...], dict[str, str]] = {
    ("/v1/users", "status"): {"milestone": "daily_habit"},  # status filters a milestone
    ("/v1/accounts", "status"): {"milestone": "team_formed"},
    ("/v1/insights/predictors", "level", "account"): {"outcome": "team_formed"},  # an account's milestone
    ("/v1/insights/weights", "level", "account"): {"outcome": "team_formed"},
    ("/v1/insights/backtest", "level", "account"): {"outcome": "churned"},  # churn of accounts
}
VALID_ON = {("/v1/accounts", "milestone"): "team_formed", ("/v1/accounts/{subject}", "subject"): "acme-co"}
STREAMS = {"/v1/stream"}  # a 200 never ends: only refusals are read here
ANY_EXAMPLES = int(os.environ.get("HEADWAY_PARAM_EXAMPLES", "25"))  # strings per parameter and store


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    db = tmp_path_factory.mktemp("params") / "p.db"
    async with asgi_collector(loads(config_text(), "t.toml"), db, clock=lambda: PINNED_US) as c:
        await send_at(c, at_event("u1", "signed_in", PINNED, account_id="acme-co"),
                      at_event("u2", "report_viewed", PINNED, account_id="acme-co"))
        yield c


def bad_values(schema: dict[str, Any]) -> list[str]:
    """Texts just outside the declaration, and texts of the wrong type."""
    if schema.get("type") == "integer":
        least, most = schema["minimum"], schema["maximum"]
        return [str(least - 1), str(most + 1), "x", "1.5", "+1", " 1", "1e3", "٣", "9" * 4301, ""]
    if "enum" in schema:
        return ["bogus", "", schema["enum"][0].upper()]
    if schema.get("format") == "date-time" or "anyOf" in schema:
        return ["0.5", "1700000000", "2024-01-01T00:00:00", "soon", "1969-12-31T23:59:59.999999Z",
                "0001-01-01T00:00:00Z", "9999-12-31T23:59:59-23:59", "10000-01-01T00:00:00Z", ""]
    if "x-maximum-seconds" in schema:  # a duration
        return ["7", "7w", "0d", f"{schema['x-maximum-seconds'] + 1}s", "1" * 13 + "d", "٣d", ""]
    return ["", "x" * (schema["maxLength"] + 1), "a\x00b"]


def good_values(path: str, name: str, schema: dict[str, Any]) -> list[str]:
    """Texts at the edges of the declaration, and its default."""
    if schema.get("type") == "integer":
        return [str(schema["minimum"]), str(schema["maximum"]), "0" * 30 + str(schema["maximum"])]
    if "enum" in schema:
        return list(schema["enum"])
    if schema.get("format") == "date-time":
        return ["1970-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59+23:59",
                "1970-01-01T00:00:00-01:00"]
    if "anyOf" in schema:
        return ["1970-01-01", "9999-12-31", "9999-12-31T23:59:59.999999Z"]
    if "x-maximum-seconds" in schema:
        return [*([schema["default"]] if "default" in schema else []), f"{schema['x-maximum-seconds']}s", "1s"]
    valid = VALID_ON.get((path, name), VALID.get(name))
    return [valid] if valid is not None else []


class Call:
    """Requests to one operation, its other parameters fixed as BASE says."""

    def __init__(self, client: httpx.AsyncClient, path: str, method: str) -> None:
        self.client, self.method = client, method.upper()
        self.parameters = DOCUMENT["paths"][path][method]["parameters"]
        self.path = path
        self.documented = {int(s) for s in DOCUMENT["paths"][path][method]["responses"]}
        self.base = {p["name"]: VALID_ON.get((path, p["name"]), VALID[p["name"]]) for p in self.parameters
                     if p["required"]}
        self.base.update(BASE.get(path, {}))
        if any(p["name"] == "at" for p in self.parameters):
            self.base["at"] = AT

    async def send(self, values: dict[str, str], key: str | None = "right",
                   extra: list[tuple[str, str]] | None = None) -> httpx.Response:
        where = {p["name"]: p["in"] for p in self.parameters}
        path = self.path.replace("{subject}", quote(values.get("subject", ""), safe=""))
        query = [(k, v) for k, v in values.items() if where.get(k, "query") == "query"] + (extra or [])
        headers = {k: v for k, v in values.items() if where.get(k) == "header"}
        if key is not None:
            headers.update(read_headers(WRITE_KEY if self.method == "POST" else READ_KEY) if key == "right" else {})
        body = b'{"sent_at": "2026-06-01T12:00:00Z", "events": []}' if self.method == "POST" else None
        r = await self.client.request(self.method, path, params=query, headers=headers, content=body)
        assert r.status_code in self.documented, (self.path, values, r.status_code, r.text)
        return r


def answered(r: httpx.Response, name: str) -> bool:
    """A 200; or, for an `at` earlier than the stored events, 400 `at_unsupported` (a read of
    aggregates, SPEC section 3) or 404 (a subject not yet seen then): the value itself was taken."""
    return r.status_code == 200 or (name == "at" and r.json()["error"]["code"] in ("at_unsupported", "not_found"))


def refused(r: httpx.Response, code: str, name: str) -> bool:
    error = r.json().get("error", {})
    return r.status_code == 400 and error.get("code") == code and error.get("message", "").startswith(f"{name}: ")


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
async def test_each_declared_parameter_is_enforced_as_declared(client: httpx.AsyncClient, path: str,
                                                                method: str) -> None:
    call = Call(client, path, method)
    for p in call.parameters:
        name, schema = p["name"], p["schema"]
        base = {k: v for k, v in call.base.items() if k not in (name, INSTEAD.get((path, name)))}
        for text in bad_values(schema):
            if p["in"] == "path" and text == "":
                continue  # no route: an empty path segment
            if p["in"] == "header" and (text == "" or text.strip() != text or not text.isascii() or "\x00" in text):
                continue  # sent empty is as not sent; else not a header value HTTP carries as it is
            r = await call.send({**base, name: text})
            assert refused(r, "invalid_parameter", name), (path, name, text, r.text)
        if p["required"] and p["in"] == "query":
            assert refused(await call.send(base), "invalid_parameter", name), (path, name)
        if path in STREAMS:
            continue
        for text in good_values(path, name, schema):
            paired = PAIRED.get((path, name))
            alongside = {**ALONGSIDE.get((path, name, text), ALONGSIDE.get((path, name), {})),
                         **({paired: text} if paired else {})}
            r = await call.send({**base, name: text, **alongside})
            assert answered(r, name), (path, name, text, r.text)
        if "default" in schema:
            without, with_default = await call.send(base), await call.send({**base, name: str(schema["default"])})
            assert without.status_code == 200 and without.json() == with_default.json(), (path, name)


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "method"), OPERATIONS)
async def test_an_unknown_parameter_is_refused_after_the_key(client: httpx.AsyncClient, path: str,
                                                              method: str) -> None:
    call = Call(client, path, method)
    for unknown in ("bogus", "account", "Limit", "at[]", ""):
        if unknown in {p["name"] for p in call.parameters}:
            continue
        r = await call.send(call.base, extra=[(unknown, "1")])
        assert refused(r, "unknown_parameter", unknown), (path, unknown, r.text)
    if DOCUMENT["paths"][path][method].get("security") != []:
        assert (await call.send(call.base, key=None, extra=[("bogus", "1")])).status_code == 401
        for p in call.parameters:  # a bad value too: the key first
            if p["in"] == "query":
                assert (await call.send({**call.base, p["name"]: "\x00" * 5000}, key=None)).status_code == 401
    for p in call.parameters:
        if p["in"] == "query":
            text = call.base.get(p["name"], VALID.get(p["name"], "1"))
            others = {k: v for k, v in call.base.items() if k != p["name"]}
            r = await call.send(others, extra=[(p["name"], text), (p["name"], text)])
            assert refused(r, "invalid_parameter", p["name"]) and "given 2 times" in r.text, (path, p["name"])


# --- issue 22: bad input that answered 503 "retry" instead of 400 --------------------------------------------

LONG = "9" * 4301  # past int()'s 4,300 digits: a ValueError


@pytest.mark.anyio
@pytest.mark.parametrize(("path", "query", "name"), [
    ("/v1/scores", "user_id=u1&at=0001-01-01T00:00:00Z", "at"),
    ("/v1/scores", "user_id=u1&at=9999-12-31T23:59:59-23:59", "at"),
    ("/v1/stickiness", "at=9999-12-31T23:59:59-23:59", "at"),
    ("/v1/insights/predictors", "outcome=onboarding_prompts&at=9999-12-31T23:59:59-23:59", "at"),
    ("/v1/insights/weights", "outcome=onboarding_prompts&at=9999-12-31T23:59:59-23:59", "at"),
    ("/v1/transitions", "since=9223372036854775808", "since"),
    ("/v1/transitions", f"since={LONG}", "since"),
    ("/v1/transitions", f"limit={LONG}", "limit"),
    ("/v1/users", f"limit={LONG}", "limit"),
    ("/v1/scores", f"user_id=u1&days={LONG}", "days"),
    ("/v1/stickiness", f"days={LONG}", "days"),
    ("/v1/retention", f"cohorts={LONG}", "cohorts"),
    ("/v1/retention", "cohorts=121", "cohorts"),
    ("/v1/stickiness", "days=367", "days"),
    ("/v1/transitions", "limit=1001", "limit"),
    ("/v1/users", "at=0.5", "at"),
    ("/v1/growth", "at=1700000000", "at"),
    ("/v1/users", "account=quiet-co", "account"),
])
async def test_issue_22_inputs_are_400_naming_the_parameter(client: httpx.AsyncClient, path: str, query: str,
                                                             name: str) -> None:
    r = await client.get(f"{path}?{query}", headers=read_headers())
    assert r.status_code == 400 and r.json()["error"]["message"].startswith(f"{name}: "), r.text


@pytest.mark.anyio
async def test_a_stream_resumed_past_any_transition_is_refused_not_cut(client: httpx.AsyncClient) -> None:
    """A Last-Event-ID no transition can have: 400 (EventSource stops), not 200 then a cut that
    makes a browser reconnect every second."""
    for cursor in ("99999999999999999999", "9223372036854775808", LONG, "-1", "abc"):
        r = await client.get("/v1/stream", headers={**read_headers(), "Last-Event-ID": cursor})
        assert refused(r, "invalid_parameter", "Last-Event-ID"), r.text
    r = await client.get("/v1/stream?since=99999999999999999999", headers=read_headers())
    assert refused(r, "invalid_parameter", "since")


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/v1/retention?cohorts=0", "/v1/stickiness?days=x",
                                  "/v1/insights/predictors?window=x", "/v1/insights/weights?outcome=",
                                  "/v1/users?bogus=1", "/v1/scores?days=0"])
async def test_the_key_is_checked_before_the_parameters(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 401
    assert (await client.get(path, headers=read_headers(WRITE_KEY))).status_code == 403
    assert (await client.get(path, headers=read_headers())).status_code == 400


@pytest.mark.anyio
async def test_reads_at_the_edges_of_time_are_answered(client: httpx.AsyncClient) -> None:
    """The first and the last instant a read takes, on every read that takes `at`."""
    for path, method in OPERATIONS:
        call = Call(client, path, method)
        if path in STREAMS or "at" not in call.base:
            continue
        first = await call.send({**call.base, "at": "1970-01-01T00:00:00Z"})
        assert answered(first, "at"), (path, first.text)
        last = await call.send({**call.base, "at": "9999-12-31T23:59:59.999999Z"})  # no event follows it
        assert last.status_code == 200, (path, last.text)


def test_every_operation_declares_its_parameters_in_the_document() -> None:
    """Each declaration is complete: a type, a description, a default or a reason to have none."""
    for path, method in OPERATIONS:
        for p in DOCUMENT["paths"][path][method]["parameters"]:
            assert p["description"] and p["in"] in ("query", "path", "header")
            schema = p["schema"]
            assert schema.get("type") == "string" or {"minimum", "maximum", "default"} <= set(schema), (path, p)
            bounded = {"enum", "format", "anyOf", "maxLength", "pattern"} & set(schema)
            assert schema.get("type") != "string" or bounded, (path, p)


# --- any string in any parameter: a documented 4xx or a 200, never a 5xx ------------------------------------

ANY_NAME = {"name": None, "in": "query"}  # a parameter the operation does not declare, of any name
FIELDS = [(path, method, p) for path, method in OPERATIONS
          for p in [*DOCUMENT["paths"][path][method]["parameters"], ANY_NAME]]
# Query strings carry any text but lone surrogates (no UTF-8 for them); header values are latin-1
# without control characters (HTTP carries nothing else); a path segment is not empty.
ANY_TEXT = st.text(st.characters(exclude_categories=["Cs"]))
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A client of `headway-collector serve` on 127.0.0.1 with a user u1 in account acme-co, on
    either store."""
    tmp = tmp_path_factory.mktemp(f"live-{request.param}")
    (tmp / "headway.toml").write_text(config_text())
    with contextlib.ExitStack() as stack:
        database = stack.enter_context(postgres_schema()) if request.param == "postgres" else None
        collector = LiveCollector(config_path=tmp / "headway.toml", db_path=tmp / "headway.db", database=database)
        collector.start()
        stack.callback(collector.stop)
        client = stack.enter_context(httpx.Client(base_url=collector.url, timeout=30))
        r = client.post("/v1/batch", headers=headers(),
                        content=body([event("u1", account_id="acme-co"), event("u2", "report_viewed")]))
        assert r.status_code == 200 and r.json()["accepted"] == 2, r.text
        yield client


def answer(client: httpx.Client, path: str, method: str, values: dict[str, str], where: dict[str, str]) -> int:
    """The status of one request (a stream's 200 is read no further than its status line)."""
    url = path.replace("{subject}", quote(values.get("subject", VALID["subject"]), safe=""))
    query = {k: v for k, v in values.items() if where.get(k, "query") == "query"}
    sent = headers() if method == "post" else read_headers()
    raw = [(k.encode(), v.encode()) for k, v in sent.items()]
    raw += [(k.encode(), v.encode("latin-1")) for k, v in values.items() if where.get(k) == "header"]
    content = body([]) if method == "post" else None
    with client.stream(method.upper(), url, params=query, headers=raw, content=content) as r:
        return r.status_code


@pytest.mark.parametrize(("path", "method", "parameter"), FIELDS,
                         ids=[f"{m} {p} {q['name'] or '(any other name)'}" for p, m, q in FIELDS])
def test_any_string_in_any_parameter_is_a_documented_answer(live: httpx.Client, path: str, method: str,
                                                           parameter: dict[str, Any]) -> None:
    operation = DOCUMENT["paths"][path][method]
    documented = {int(s) for s in operation["responses"]}
    where = {p["name"]: p["in"] for p in operation["parameters"]}
    base = {p["name"]: VALID_ON.get((path, p["name"]), VALID[p["name"]]) for p in operation["parameters"]
            if p["required"]} | BASE.get(path, {})
    text = HEADER_TEXT if parameter["in"] == "header" else ANY_TEXT
    if parameter["in"] == "path":
        text = text.filter(lambda t: t not in ("", ".", ".."))  # a dot segment is another path
    names = ANY_TEXT.filter(lambda n: n not in where) if parameter["name"] is None else st.just(parameter["name"])

    @settings(max_examples=ANY_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(name=names, value=text)
    def run(name: str, value: str) -> None:
        status = answer(live, path, method, {**base, name: value}, where)
        assert status in documented and status < 500, (path, name, value, status)

    run()
