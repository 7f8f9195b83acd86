// Checks request bodies against an OpenAPI 3.0 spec's request-body schemas, for the tests of
// the vercel provider: Prism does not validate Vercel's request bodies (the spec's
// `projectSettings.framework` enum holds `null`), so the fake asks this instead.
//
//   node validate-bodies.js SPEC NODE_MODULES
//
// NODE_MODULES holds `ajv` (Prism's own dependency, installed with it). Reads one JSON line
// per request on stdin: {"method": "POST", "path": "/v13/deployments", "body": {...}}, and
// answers one JSON line each: {"ok": true} or {"ok": false, "errors": "..."}. A request whose
// operation has no JSON body schema, or a path the spec does not have, is not ok.
"use strict";
const fs = require("fs");
const path = require("path");
const readline = require("readline");

const [specFile, modulesArg] = process.argv.slice(2);
const modules = path.resolve(modulesArg);
const Ajv = require(path.join(modules, "ajv")).default;
let addFormats = null;
try {
  addFormats = require(path.join(modules, "ajv-formats"));
} catch (_) {
  addFormats = null;
}

const spec = JSON.parse(fs.readFileSync(specFile, "utf8"));
const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: addFormats !== null });
if (addFormats) {
  (addFormats.default || addFormats)(ajv);
}
ajv.addSchema(spec, "spec");

const escape = (s) => s.replace(/~/g, "~0").replace(/\//g, "~1");
const routes = Object.keys(spec.paths).map((template) => ({
  template,
  pattern: new RegExp("^" + template.replace(/\{[^}]+\}/g, "[^/]+") + "$"),
}));
const compiled = new Map();

function check(request) {
  const route = routes.find((r) => r.pattern.test(request.path));
  if (!route) {
    return { ok: false, errors: `no path of the spec matches ${request.path}` };
  }
  const method = String(request.method || "").toLowerCase();
  const operation = spec.paths[route.template][method];
  const schema = operation && operation.requestBody && operation.requestBody.content &&
    operation.requestBody.content["application/json"];
  if (!schema) {
    return { ok: false, errors: `${method.toUpperCase()} ${route.template} takes no JSON body` };
  }
  const key = `${method} ${route.template}`;
  if (!compiled.has(key)) {
    const pointer = ["paths", route.template, method, "requestBody", "content", "application/json", "schema"]
      .map(escape)
      .join("/");
    compiled.set(key, ajv.getSchema(`spec#/${pointer}`));
  }
  const validate = compiled.get(key);
  if (validate(request.body)) {
    return { ok: true };
  }
  const errors = validate.errors
    .map((e) => `${e.instancePath || "(body)"} ${e.message}${e.params && e.params.additionalProperty ? ` (${e.params.additionalProperty})` : ""}`)
    .join("; ");
  return { ok: false, errors: `${key}: ${errors}` };
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  let answer;
  try {
    answer = check(JSON.parse(line));
  } catch (error) {
    answer = { ok: false, errors: `validator: ${error.message}` };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
});
