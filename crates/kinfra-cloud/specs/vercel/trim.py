"""Trims Vercel's OpenAPI spec to the operations the vercel provider calls (and the components
they reference), so Prism loads it fast: python3 trim.py FULL.json > openapi.json"""
import json
import sys

KEEP = {
    "/v9/projects/{idOrName}": ["get"],
    "/v6/deployments": ["get"],
    "/v13/deployments": ["post"],
    "/v12/deployments/{id}/cancel": ["patch"],
    "/v10/projects/{projectId}/promote/{deploymentId}": ["post"],
    "/v1/projects/{projectId}/pause": ["post"],
    "/v1/projects/{projectId}/unpause": ["post"],
    "/v3/deployments/{idOrUrl}/events": ["get"],
    "/v1/projects/{projectId}/deployments/{deploymentId}/runtime-logs": ["get"],
}

spec = json.load(open(sys.argv[1]))
spec["paths"] = {
    p: {m: op for m, op in spec["paths"][p].items() if m in methods}
    for p, methods in KEEP.items()
}
schemas = spec["components"].get("schemas", {})
used = set()


def walk(node):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            name = ref.rsplit("/", 1)[1]
            if name not in used:
                used.add(name)
                walk(schemas[name])
        for value in node.values():
            walk(value)
    elif isinstance(node, list):
        for value in node:
            walk(value)


walk(spec["paths"])
spec["components"]["schemas"] = {k: v for k, v in schemas.items() if k in used}
spec["tags"] = []
json.dump(spec, sys.stdout, indent=1, sort_keys=False)
sys.stdout.write("\n")
