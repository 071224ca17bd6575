"""docs/openapi.yaml against the app: every documented operation is served, every public route
served is documented, every $ref resolves, and every error the gateway raises is documented."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

from gateway import errors
from gateway.app import build_app
from gateway.config import parse_config
from gateway.handlers import ADMIN_PATHS
from tests.conftest import base_config
from tests.security.helpers import call, openai_error

SPEC = yaml.safe_load((Path(__file__).parents[2] / "docs" / "openapi.yaml").read_text())
METHODS = {"get", "post", "put", "delete", "patch"}


def _documented() -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in SPEC["paths"].items() for method in ops if method in METHODS}


def _served(geoip_reader: Any) -> set[tuple[str, str]]:
    app = build_app(parse_config(base_config({"eu-west": ["http://127.0.0.1:9"]}), "<t>"), geoip_reader=geoip_reader)
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or "{tail" in path:
            continue  # aiohttp's HEAD twins of GETs, and the catch-all 404
        out.add((route.method, path))
    return out


def test_it_is_openapi_3_1() -> None:
    assert SPEC["openapi"].startswith("3.1.")
    assert SPEC["info"]["title"] and SPEC["info"]["version"]


def test_documented_operations_are_the_routes_served(geoip_reader) -> None:
    served, documented = _served(geoip_reader), _documented()
    assert documented - served == set(), "documented but not served"
    public = {(m, p) for m, p in served if not p.startswith(ADMIN_PATHS)}  # admin networks only
    assert public - documented == set(), "served but not documented"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_ref_resolves() -> None:
    for ref in _refs(SPEC):
        assert ref.startswith("#/"), ref
        node: Any = SPEC
        for part in ref[2:].split("/"):
            node = node[part]
        assert node, ref


def test_every_operation_documents_its_answers() -> None:
    for path, ops in SPEC["paths"].items():
        for method, op in ops.items():
            assert op.get("responses"), (method, path)
            assert op.get("operationId") and op.get("summary"), (method, path)


def test_every_error_the_gateway_raises_is_documented_for_the_inference_routes() -> None:
    statuses = {cls.status for cls in _subclasses(errors.GatewayError)}
    for path in ("/v1/chat/completions", "/v1/completions"):
        documented = {int(code) for code in SPEC["paths"][path]["post"]["responses"]}
        assert statuses - documented == set(), path


def _subclasses(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


async def test_real_answers_have_the_documented_shapes(sim_factory, gateway_factory) -> None:
    sim = await sim_factory()
    gw = await gateway_factory(base_config({"eu-west": [sim.url]}))
    error = SPEC["components"]["schemas"]["Error"]
    status, body, _ = await call(gw.url, data=b"{", headers={"Content-Type": "application/json"})
    assert status == 400
    assert set(openai_error(body)) == set(error["properties"]["error"]["required"])
    status, body, _ = await call(gw.url, path="/v1/models", method="GET")
    doc = orjson.loads(body)
    model_schema = SPEC["components"]["schemas"]["ModelList"]
    assert set(model_schema["required"]) <= set(doc)
    card = SPEC["components"]["schemas"]["Model"]
    assert set(card["required"]) <= set(doc["data"][0]) <= set(card["properties"])
