"""jkg's OpenAPI 3 description (``jkg/openapi.yaml``), read once at startup.

Served as YAML at ``/api/spec.yaml`` and at jupyter-kernel-gateway's
``/api/swagger.yaml``, and as JSON at ``/api/swagger.json``.  The servers
entry is set to the gateway's ``--base-url`` so generated clients and tools
(schemathesis, Swagger UI) resolve paths where they really are.
"""
from __future__ import annotations

import json
from importlib import resources

import yaml


def load_spec(base_url: str = "/") -> tuple[bytes, bytes]:
    """``(yaml_bytes, json_bytes)`` of the description with ``servers`` at ``base_url``."""
    text = resources.files("jkg").joinpath("openapi.yaml").read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    spec["servers"] = [{"url": base_url}]
    return (yaml.safe_dump(spec, sort_keys=False).encode("utf-8"),
            json.dumps(spec, separators=(",", ":")).encode("utf-8"))
