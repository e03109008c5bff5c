"""Jobs found by name and tag; unknown query parameters refused everywhere; the OpenAPI document as
generated clients and readers use it."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from svc_helpers import Service, small_spec

from alignahead.spec import JobSpec


def ids(api: Service, **params: Any) -> list[str]:
    r = api.client.get("/v1/jobs", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    return [j["id"] for j in r.json()["jobs"]]


def test_jobs_are_listed_by_exact_name_and_by_tags(api: Service) -> None:
    run = uuid.uuid4().hex[:8]
    a = api.submit(small_spec() | {"name": f"sweep-{run}", "tags": [f"t{run}", "lr:0.01"]})
    b = api.submit(small_spec() | {"name": f"sweep-{run}", "tags": [f"t{run}"]})
    c = api.submit(small_spec() | {"name": f"sweep-{run}-2", "tags": ["lr:0.01"]})
    assert a["tags"] == [f"t{run}", "lr:0.01"] and a["name"] == f"sweep-{run}"

    assert ids(api, name=f"sweep-{run}") == [b["id"], a["id"]]  # exact: not sweep-...-2; newest first
    assert ids(api, name=f"sweep-{run}-2") == [c["id"]]
    assert ids(api, name="sweep") == []
    assert ids(api, tag=f"t{run}") == [b["id"], a["id"]]
    assert ids(api, tag=[f"t{run}", "lr:0.01"]) == [a["id"]]  # repeated: every tag must be there
    assert c["id"] in ids(api, tag="lr:0.01") and b["id"] not in ids(api, tag="lr:0.01")
    assert ids(api, tag=f"t{run}", name=f"sweep-{run}", status="queued", limit=1) == [b["id"]]
    listed = api.client.get("/v1/jobs", params={"tag": f"t{run}"}).json()["jobs"]
    assert [j["tags"] for j in listed] == [[f"t{run}"], [f"t{run}", "lr:0.01"]]

    r = api.client.get("/v1/jobs", params={"tag": "x" * 65})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "tag"]
    for job in (a, b, c):
        api.client.post(f"/v1/jobs/{job['id']}/cancel")


@pytest.mark.parametrize(
    ("tags", "words"),
    [
        (["ok", "ok"], "tags repeat 'ok'"),
        (["has space"], "should match pattern"),
        (["x" * 65], "at most 64 characters"),
        ([f"t{i}" for i in range(17)], "at most 16 items"),
    ],
)
def test_bad_tags_are_422_naming_the_field(api: Service, tags: list[str], words: str) -> None:
    r = api.client.post("/v1/jobs", json=small_spec() | {"tags": tags})
    assert r.status_code == 422
    body = r.json()
    assert words in body["detail"] and body["errors"][0]["loc"][:2] == ["body", "tags"]


def test_every_v1_route_refuses_an_unknown_query_parameter(api: Service) -> None:
    job = api.submit(small_spec())
    paths = api.client.get("/openapi.json").json()["paths"]
    checked = 0
    for path, ops in paths.items():
        if not path.startswith("/v1"):
            continue
        url = path.format(job_id=job["id"], student=0, kind="best", upload_id="0" * 32, study_id="0" * 32)
        for method in ops:
            if method == "get":
                r = api.client.get(url, params={"bogus": "1"})
                assert r.status_code == 422, (path, r.text)
                body = r.json()
                assert body["errors"] == [
                    {"loc": ["query", "bogus"], "msg": body["errors"][0]["msg"], "type": "value_error"}
                ], path
                assert "unknown query parameter 'bogus'" in body["detail"], path
                checked += 1
    assert checked >= 9
    r = api.client.post("/v1/jobs", params={"bogus": 1}, json=small_spec())
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "bogus"]
    api.client.post(f"/v1/jobs/{job['id']}/cancel")


# --- OpenAPI ------------------------------------------------------------------------------------------

SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


def test_operation_ids_are_plain_snake_case_names(api: Service) -> None:
    doc = api.client.get("/openapi.json").json()
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    names = [op["operationId"] for _, _, op in ops]
    assert len(set(names)) == len(names)
    for _, method, op in ops:
        name = op["operationId"]
        assert SNAKE.match(name), name
        assert "v1" not in name and "job_id" not in name and not name.endswith(f"_{method}"), name
    by_route = {(p, m): op["operationId"] for p, m, op in ops}
    assert by_route[("/v1/jobs", "post")] == "submit_job"
    assert by_route[("/v1/jobs", "get")] == "list_jobs"
    assert by_route[("/v1/jobs/{job_id}", "get")] == "get_job"
    assert by_route[("/v1/jobs/{job_id}/events", "get")] == "get_job_events"
    assert by_route[("/v1/jobs/{job_id}/logs", "get")] == "get_job_logs"


def test_every_spec_field_is_described_and_the_example_is_valid(api: Service) -> None:
    doc = api.client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]

    def walk(name: str, seen: set[str]) -> None:
        if name in seen:
            return
        seen.add(name)
        for field_name, prop in schemas[name].get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field_name} has no description"
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(prop).replace("'", '"')):
                walk(ref, seen)

    seen: set[str] = set()
    walk("JobSpec", seen)
    assert {"JobSpec", "DatasetSpec", "StudentSpec", "DistillationSpec", "TrainingSpec", "SplitSpec"} <= seen

    body = doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": "#/components/schemas/JobSpec"}
    assert body["examples"]
    for example in body["examples"].values():
        JobSpec.model_validate(example["value"])
    example = body["examples"]["synthetic"]["value"]
    r = api.client.post("/v1/jobs", json=example)  # the service takes it as shown
    assert r.status_code == 201, r.text
    api.client.post(f"/v1/jobs/{r.json()['id']}/cancel")


def test_every_4xx_is_documented_with_the_one_error_model(api: Service) -> None:
    doc = api.client.get("/openapi.json").json()
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    error = {"$ref": "#/components/schemas/ErrorOut"}
    for path, item in doc["paths"].items():
        if not path.startswith("/v1"):
            continue
        for method, op in item.items():
            responses = op["responses"]
            assert "422" in responses and "401" in responses, (method, path)
            for code, response in responses.items():
                if code.startswith("4") and code != "400":
                    assert response["content"]["application/json"]["schema"] == error, (method, path, code)


def test_openapi_lists_what_the_guards_answer_and_the_event_stream(api: Service) -> None:
    doc = api.client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/ErrorOut"}
    unsafe = [(p, m, op) for p, item in doc["paths"].items() for m, op in item.items() if m in ("post", "delete")]
    assert len(unsafe) >= 7
    for path, method, op in unsafe:  # a foreign browser origin (403) and an oversized body (413)
        for code in ("403", "413"):
            assert op["responses"][code]["content"]["application/json"]["schema"] == error, (method, path, code)
    events = doc["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]
    stream = events["200"]["content"]["text/event-stream"]
    assert stream["itemSchema"]["properties"]["event"]["enum"] == ["status", "metric", "end"]
    assert set(events["200"]["content"]) == {"text/event-stream"}
    for code in ("401", "404", "422"):  # errors are JSON, even from the stream's operation
        assert set(events[code]["content"]) == {"application/json"}, code
    # and the guard does answer as documented
    r = api.client.post("/v1/jobs", json=small_spec(), headers={"Origin": "https://elsewhere.example"})
    assert r.status_code == 403 and set(r.json()) == {"detail", "errors"}
