//! The JSON Schema (draft 2020-12) of `kinfra.toml`, `kinfra.yaml` and `kinfra.json`, generated
//! from the config model's types (feature `schema`): the derived structs give their keys, doc
//! comments and defaults; the types with their own parsing describe what they accept here.
//!
//! The schema is what editors read (taplo's `#:schema`, the YAML language server's `$schema`
//! modeline); `kinfra config check` stays the judge: it also checks what a schema cannot say
//! (dependency cycles, routes to services that exist, `${...}` references).

use super::model::{
    DOCKER_ONLY_RESOURCE_KEYS, DependCondition, DependsOn, OnDown, ProbeConfig,
    ProviderInstanceConfig, ProvidersConfig, RESOURCE_FIELDS, ResourceConfig, RestartPolicy,
    ScaleToZero, Template,
};
use super::types::{ByteSize, CommandSpec, Dur, OneOrMany, PortSpec, SignalName, StatusRange};
use super::{Config, Format};
use crate::secret::Secret;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;

/// The keys kinfra itself reads in `[providers.NAME]`; any other key is the provider's own.
pub const PROVIDER_INSTANCE_FIELDS: &[&str] =
    &["provider", "token", "token_file", "base_url", "rate_limit"];

/// The JSON Schema of a whole config file, as `kinfra config schema` prints it.
pub fn config_schema() -> Value {
    let mut schema = schemars::schema_for!(Config);
    add_aliases(&mut schema);
    schema.insert("title".into(), "kinfra config".into());
    schema.insert(
        "description".into(),
        "kinfra.toml (or .yaml, .json): services, resources, routes and the runtime's settings. \
         `kinfra config check` validates a file fully."
            .into(),
    );
    schema.to_value()
}

/// Keys the model accepts under a second name (`#[serde(alias)]`, which the derived schema
/// leaves out): (definition, alias, key). The schema test compares every table's keys with
/// the config's own unknown-key lists, so a new alias missing here fails it.
const ALIASES: &[(&str, &str, &str)] = &[("ServiceConfig", "cwd", "working_dir")];

fn add_aliases(schema: &mut Schema) {
    let Some(Value::Object(defs)) = schema.get_mut("$defs") else {
        return;
    };
    for (definition, alias, key) in ALIASES {
        let Some(Value::Object(properties)) = defs
            .get_mut(*definition)
            .and_then(|d| d.get_mut("properties"))
        else {
            continue;
        };
        if let Some(Value::Object(target)) = properties.get(*key) {
            let mut same = target.clone();
            same.insert("description".into(), format!("Same as `{key}`.").into());
            same.remove("default");
            properties.insert((*alias).to_owned(), Value::Object(same));
        }
    }
}

/// Parses config text into the generic tree kinfra deserializes its config from (before
/// `KINFRA_*` overrides), as JSON: what the schema describes. The error is the syntax error's
/// message with its line and column.
pub fn parse_tree(text: &str, format: Format) -> Result<Value, String> {
    let parsed = match format {
        Format::Toml => super::toml_tree::parse(text),
        Format::Yaml => super::yaml_tree::parse(text),
        Format::Json => super::json_tree::parse(text),
    };
    parsed.map(|(tree, _)| tree).map_err(|e| match e.pos {
        Some(pos) => format!("{}:{}: {}", pos.line, pos.column, e.message.trim_end()),
        None => e.message,
    })
}

/// A scalar type's schema, inlined where it is used.
macro_rules! inline_schema {
    ($type:ty, $name:literal, $schema:tt) => {
        impl JsonSchema for $type {
            fn schema_name() -> Cow<'static, str> {
                $name.into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

inline_schema!(Dur, "Duration", {
    "description": "A duration such as \"300ms\", \"2s\", \"1m30s\" or \"1h\" (units ms, s, m, h, d), or 0.",
    "anyOf": [
        { "type": "string", "pattern": "^\\s*(0|([0-9]+(\\.[0-9]+)?\\s*[A-Za-zµ]+\\s*)+)$" },
        { "const": 0 }
    ]
});

inline_schema!(ByteSize, "ByteSize", {
    "description": "A size such as \"10MiB\" or \"512KB\", or a number of bytes.",
    "anyOf": [
        { "type": "string", "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[A-Za-z]*\\s*$" },
        { "type": "integer", "minimum": 0 }
    ]
});

inline_schema!(PortSpec, "Port", {
    "description": "A port number (1-65535), or \"auto\": a free port picked at first start and kept.",
    "anyOf": [
        { "type": "integer", "minimum": 1, "maximum": 65535 },
        { "const": "auto" },
        { "type": "string", "pattern": "^[0-9]+$" }
    ]
});

inline_schema!(CommandSpec, "Command", {
    "description": "A shell command string (run with sh -c), or a list: program, then arguments.",
    "anyOf": [
        { "type": "string" },
        { "type": "array", "items": { "type": "string" }, "minItems": 1 }
    ]
});

inline_schema!(OneOrMany, "OneOrMany", {
    "description": "A string, or a list of strings.",
    "anyOf": [
        { "type": "string" },
        { "type": "array", "items": { "type": "string" } }
    ]
});

inline_schema!(SignalName, "Signal", {
    "description": "A signal name such as \"SIGTERM\" or \"TERM\".",
    "type": "string"
});

inline_schema!(StatusRange, "StatusRange", {
    "description": "An HTTP status code such as 200, or a range such as \"200-299\".",
    "anyOf": [
        { "type": "integer", "minimum": 100, "maximum": 599 },
        { "type": "string", "pattern": "^\\s*[0-9]{3}\\s*(-\\s*[0-9]{3}\\s*)?$" }
    ]
});

inline_schema!(Secret, "Secret", {
    "description": "A secret value (masked in kinfra's output); `${VAR}` takes it from the environment.",
    "type": "string"
});

impl JsonSchema for DependsOn {
    fn schema_name() -> Cow<'static, str> {
        "DependsOn".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let condition = generator.subschema_for::<DependCondition>();
        json_schema!({
            "description": "What this waits for: a table of name = condition (started, healthy, completed_successfully), or a list of names (meaning started).",
            "anyOf": [
                { "type": "object", "additionalProperties": condition },
                { "type": "array", "items": { "type": "string" } }
            ]
        })
    }
}

/// The schema of one key kinfra reads in `[resources.NAME]`; `None` for a key this function
/// does not know (the schema test then fails: every key of `RESOURCE_FIELDS` must be typed).
fn resource_key_schema(key: &str, generator: &mut SchemaGenerator) -> Option<Schema> {
    Some(match key {
        "template" => generator.subschema_for::<Template>(),
        "image" | "provider" => generator.subschema_for::<String>(),
        "command" => generator.subschema_for::<CommandSpec>(),
        "container_port" => generator.subschema_for::<u16>(),
        "port" => generator.subschema_for::<PortSpec>(),
        // A container's environment; on a provider resource, the provider's own key.
        "env" => json_schema!({ "type": "object" }),
        "volumes" => generator.subschema_for::<BTreeMap<String, String>>(),
        // A probe table; on a provider resource also the provider's health command.
        "health" => {
            let probe = generator.subschema_for::<ProbeConfig>();
            json_schema!({
                "anyOf": [probe, { "type": "string" }, { "type": "array" }]
            })
        }
        "depends_on" => generator.subschema_for::<DependsOn>(),
        "restart" => generator.subschema_for::<RestartPolicy>(),
        "jetstream" | "confirm_delete" => generator.subschema_for::<bool>(),
        "stop_grace" | "interval" => generator.subschema_for::<Dur>(),
        "on_down" => generator.subschema_for::<OnDown>(),
        "scale_to_zero" => generator.subschema_for::<ScaleToZero>(),
        "nodes" => generator.subschema_for::<Vec<String>>(),
        _ => return None,
    })
}

/// Resource keys the schema describes (the same list the config's unknown-key errors offer).
pub fn resource_keys() -> &'static [&'static str] {
    RESOURCE_FIELDS
}

impl JsonSchema for ResourceConfig {
    fn schema_name() -> Cow<'static, str> {
        "ResourceConfig".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let mut properties = Map::new();
        let mut container_properties = Map::new();
        for key in RESOURCE_FIELDS {
            let schema = resource_key_schema(key, generator).unwrap_or_else(|| true.into());
            properties.insert((*key).to_owned(), schema.to_value());
            container_properties.insert((*key).to_owned(), Value::Bool(true));
        }
        // On a container, `health` is a probe table and `env` a table of strings.
        container_properties.insert(
            "health".into(),
            generator.subschema_for::<ProbeConfig>().to_value(),
        );
        container_properties.insert(
            "env".into(),
            generator
                .subschema_for::<BTreeMap<String, String>>()
                .to_value(),
        );
        let docker_only: Map<String, Value> = DOCKER_ONLY_RESOURCE_KEYS
            .iter()
            .map(|key| ((*key).to_owned(), Value::Bool(false)))
            .collect();
        json_schema!({
            "description": "An external resource: a container (`template` and the Docker keys) or, with `provider`, a cloud resource driven by a provider instance (kinfra's keys plus the provider's own).",
            "type": "object",
            "properties": properties,
            "if": { "required": ["provider"] },
            "then": { "properties": docker_only },
            "else": {
                "required": ["template"],
                "properties": container_properties,
                "additionalProperties": false
            }
        })
    }
}

impl JsonSchema for ProviderInstanceConfig {
    fn schema_name() -> Cow<'static, str> {
        "ProviderInstanceConfig".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let secret = generator.subschema_for::<Secret>();
        json_schema!({
            "description": "A provider instance (an account, a token, an endpoint); keys other than kinfra's are the provider's own, checked by the provider.",
            "type": "object",
            "properties": {
                "provider": { "type": "string", "description": "The provider's id; absent means the instance's name." },
                "token": secret,
                "token_file": { "type": "string", "description": "File holding the API token." },
                "base_url": { "type": "string", "description": "API base URL, overriding the provider's." },
                "rate_limit": {
                    "type": "string",
                    "description": "Most requests to the API: N/s, N/m or N/h.",
                    "pattern": "^\\s*[0-9]+\\s*/\\s*[smh]\\s*$"
                }
            }
        })
    }
}

impl JsonSchema for ProvidersConfig {
    fn schema_name() -> Cow<'static, str> {
        "ProvidersConfig".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let instance = generator.subschema_for::<ProviderInstanceConfig>();
        json_schema!({
            "description": "Cloud provider instances by name, beside `plugin_dirs`.",
            "type": "object",
            "properties": {
                "plugin_dirs": {
                    "type": "array",
                    "items": { "type": "string" },
                    "description": "Extra directories searched for kinfra-provider-<id> executables."
                }
            },
            "additionalProperties": instance
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_resource_key_is_typed() {
        let mut generator = SchemaGenerator::default();
        for key in RESOURCE_FIELDS {
            assert!(
                resource_key_schema(key, &mut generator).is_some(),
                "resource key `{key}` has no schema in config/schema.rs"
            );
        }
    }

    #[test]
    fn provider_instance_keys_are_the_models() {
        // Every field of the model, set: its serialized keys are the keys kinfra reads.
        let instance = ProviderInstanceConfig {
            provider: Some("neon".into()),
            token: Some(Secret::new("t")),
            token_file: Some("f".into()),
            base_url: Some("http://x".into()),
            rate_limit: Some("5/s".into()),
            extra: BTreeMap::new(),
        };
        let serialized = serde_json::to_value(&instance).unwrap();
        let mut model: Vec<&str> = serialized
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        model.sort_unstable();
        let mut listed = PROVIDER_INSTANCE_FIELDS.to_vec();
        listed.sort_unstable();
        assert_eq!(model, listed);
        let schema = config_schema();
        let mut in_schema: Vec<&str> = schema["$defs"]["ProviderInstanceConfig"]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        in_schema.sort_unstable();
        assert_eq!(in_schema, listed);
    }

    #[test]
    fn the_schema_is_draft_2020_12() {
        let schema = config_schema();
        assert_eq!(
            schema["$schema"],
            "https://json-schema.org/draft/2020-12/schema"
        );
        assert_eq!(schema["additionalProperties"], false);
    }
}
