#!/usr/bin/env python3
"""Makes this directory's openapi.trimmed.json from the shared trimmed Cloudflare spec
(../shared/specs/cloudflare/openapi.trimmed.json, sha256 b2922a72e9bd8965…; see README.md):
three corrections of the 2024-08-07 spec's mistakes, nothing else changed.

1. Security of the DNS record operations: the spec lists only `X-Auth-Email` + `X-Auth-Key`
   for `/zones/{zone_id}/dns_records`, although Cloudflare accepts API tokens there
   (`Authorization: Bearer`, the way its official SDKs call them) and the same spec lists
   `api_token` for every `cfd_tunnel` operation. Prism would refuse every token-authenticated
   DNS request, so `{"api_token": []}` is added to their security.
2. Status ranges: the DNS operations declare their failures as `4xx`; OpenAPI 3 allows only
   `4XX` (Prism then matches no 4xx answer at all), so they are upper-cased.
3. DNS request bodies: POST, PUT and PATCH take `dns-records_dns-record`, whose top-level
   `required` lists the server's own fields (`id`, `proxiable`, `created_on`, `modified_on`, only
   in answers; Cloudflare's later specs have separate request schemas). Request bodies get
   `dns-records_dns-record-request`: the same `oneOf` of record types (each still requiring
   `type`, `name`, `content`) without that list.

Usage: correct.py SHARED_SPEC OUT
"""
import json
import sys

source, out = sys.argv[1], sys.argv[2]
with open(source) as f:
    spec = json.load(f)
changed = 0
for path, item in spec["paths"].items():
    if not path.startswith("/zones/{zone_id}/dns_records"):
        continue
    for method, op in item.items():
        if not isinstance(op, dict) or "security" not in op:
            continue
        if {"api_token": []} not in op["security"]:
            op["security"].append({"api_token": []})
            changed += 1
for path, item in spec["paths"].items():
    if not path.startswith("/zones/{zone_id}/dns_records"):
        continue
    for method, op in item.items():
        if not isinstance(op, dict):
            continue
        responses = op.get("responses", {})
        for code in list(responses):
            if code != code.upper():
                responses[code.upper()] = responses.pop(code)
                changed += 1
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
        if body.get("schema") == {"$ref": "#/components/schemas/dns-records_dns-record"}:
            body["schema"] = {"$ref": "#/components/schemas/dns-records_dns-record-request"}
            changed += 1
schemas = spec["components"]["schemas"]
request = dict(schemas["dns-records_dns-record"])
request.pop("required", None)
schemas["dns-records_dns-record-request"] = request
with open(out, "w") as f:
    json.dump(spec, f, indent=2, sort_keys=False)
    f.write("\n")
print(f"{changed} corrections")
