"""An OpenAPI 3.1 description of the kit's JSON API (served at /api/v1/openapi.json).

The operations written out below are described in full. Every other /api/ route of the
running app is added with its path parameters and the security it needs, so that a
scanner (tests/test_security_scan.py runs schemathesis) reaches every API route, and so
that the description can never silently miss one.
"""

from __future__ import annotations

import re
from typing import Callable

from flask import Blueprint, current_app, jsonify

from ..security import roles as R
from .guard import permission_for, route_permissions

bp = Blueprint("openapi", __name__)

ROUTE_PERMISSIONS = {"openapi.document": R.AUTHENTICATED}

_ERROR = {"$ref": "#/components/schemas/Error"}
_JSON_ERR = {"description": "refused", "content": {"application/json": {"schema": _ERROR}}}
_STD = {"400": _JSON_ERR, "401": _JSON_ERR, "403": _JSON_ERR, "404": _JSON_ERR, "409": _JSON_ERR,
        "413": _JSON_ERR, "423": _JSON_ERR}


def _ok(schema: dict, code: str = "200") -> dict:
    return {code: {"description": "ok", "content": {"application/json": {"schema": schema}}}, **_STD}


_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 200}}
_USER = {"type": "object", "properties": {"name": {"type": "string"}, "role": {"type": "string"},
                                          "disabled": {"type": "boolean"}}, "required": ["name", "role"]}
_TOKEN = {"type": "object", "properties": {"id": {"type": "string"}, "role": {"type": "string"},
                                           "state": {"type": "string"}}, "required": ["id", "role", "state"]}

PATHS: dict = {
    "/healthz": {"get": {"operationId": "healthz", "security": [], "responses": _ok(
        {"type": "object", "properties": {"ok": {"type": "boolean"}, "locked": {"type": "boolean"}},
         "required": ["ok", "locked"]})}},
    "/api/v1/status": {"get": {"operationId": "status", "responses": _ok({"type": "object"})}},
    "/api/v1/session": {"get": {"operationId": "session", "responses": _ok(
        {"type": "object", "properties": {"user": {"type": "string"}, "role": {"type": "string"},
                                          "csrf_token": {"type": "string"}}, "required": ["user", "role"]})}},
    "/api/v1/users": {
        "get": {"operationId": "listUsers", "responses": _ok(
            {"type": "object", "properties": {"users": {"type": "array", "items": _USER}}})},
        "post": {"operationId": "addUser", "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "properties": {
                "name": {"type": "string", "maxLength": 80}, "secret": {"type": "string", "maxLength": 300},
                "role": {"type": "string", "enum": list(R.HUMAN_ROLES)}},
                "required": ["name", "secret", "role"]}}}},
            "responses": _ok(_USER, "201")},
    },
    "/api/v1/users/{name}/disable": {"post": {"operationId": "disableUser", "parameters": [_NAME],
                                              "responses": _ok(_USER)}},
    "/api/v1/users/{name}/enable": {"post": {"operationId": "enableUser", "parameters": [_NAME],
                                             "responses": _ok(_USER)}},
    "/api/v1/users/{name}/unlock": {"post": {"operationId": "unlockUser", "parameters": [_NAME],
                                             "responses": _ok(_USER)}},
    "/api/v1/users/{name}/reset": {"post": {"operationId": "resetUser", "parameters": [_NAME],
                                            "requestBody": {"required": True, "content": {"application/json": {
                                                "schema": {"type": "object", "properties": {
                                                    "secret": {"type": "string", "maxLength": 300}},
                                                    "required": ["secret"]}}}},
                                            "responses": _ok(_USER)}},
    "/api/v1/tokens": {
        "get": {"operationId": "listTokens", "responses": _ok(
            {"type": "object", "properties": {"tokens": {"type": "array", "items": _TOKEN}}})},
        "post": {"operationId": "createToken", "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "properties": {
                "role": {"type": "string"}, "label": {"type": "string", "maxLength": 200},
                "days": {"type": "number"}}, "required": ["role"]}}}},
            "responses": _ok(_TOKEN, "201")},
    },
    "/api/v1/tokens/{token_id}/revoke": {"post": {"operationId": "revokeToken", "parameters": [
        {"name": "token_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64}}],
        "responses": _ok(_TOKEN)}},
    "/api/v1/audit": {"get": {"operationId": "auditEvents", "parameters": [
        {"name": "since", "in": "query", "schema": {"type": "integer"}},
        {"name": "limit", "in": "query", "schema": {"type": "integer"}}],
        "responses": _ok({"type": "object", "properties": {"events": {"type": "array"}}})}},
    "/api/v1/audit/verify": {"get": {"operationId": "auditVerify", "responses": {
        **_ok({"type": "object", "properties": {"ok": {"type": "boolean"}}}),
        "409": {"description": "the trail is broken", "content": {"application/json": {"schema": {"type": "object"}}}}}}},
    "/wado": {"get": {"operationId": "wadoUri", "parameters": [
        {"name": n, "in": "query", "required": n in ("requestType", "studyUID", "seriesUID", "objectUID"),
         "schema": {"type": "string", "maxLength": 200}}
        for n in ("requestType", "studyUID", "seriesUID", "objectUID", "contentType", "frameNumber",
                  "transferSyntax")],
        "responses": {"200": {"description": "the object, or a rendered frame"}, **_STD,
                      "406": _JSON_ERR, "410": _JSON_ERR}}},
}

_CONVERTER = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")
_TYPES = {"int": {"type": "integer", "minimum": 0}, "float": {"type": "number"},
          "uuid": {"type": "string", "format": "uuid"}}


def describe(app, permission_of: Callable[[str, str], str | None]) -> dict:
    """The OpenAPI document for `app`: the operations above plus every other API route.
    `permission_of(endpoint, method)` is the guard's answer for a route."""
    paths = {p: dict(ops) for p, ops in PATHS.items()}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(("/api/", "/dicom-web/", "/dicomweb/")):
            continue
        path = _CONVERTER.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        params = [{"name": m.group(2), "in": "path", "required": True,
                   "schema": _TYPES.get(m.group(1) or "", {"type": "string", "maxLength": 120})}
                  for m in _CONVERTER.finditer(rule.rule)]
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            ops = paths.setdefault(path, {})
            if method.lower() in ops:
                continue
            op: dict = {"operationId": f"{rule.endpoint}.{method.lower()}", "responses": {
                "200": {"description": "ok"}, **_STD}}
            if params:
                op["parameters"] = params
            if permission_of(rule.endpoint, method) == R.PUBLIC:
                op["security"] = []
            ops[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "fieldkit API", "version": "1"},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {"type": "string"},
                                                                   "status": {"type": "integer"}},
                                  "required": ["error"]}},
        },
        "security": [{"bearer": []}],
    }


@bp.get("/api/v1/openapi.json")
def document():
    table = route_permissions(current_app)
    return jsonify(describe(current_app, lambda endpoint, method: permission_for(table, endpoint, method)))
