//! A deserializer over the generic config tree whose errors keep serde's structure (which
//! field is missing, which key is unknown and what was expected, ...), so that messages are
//! written from typed facts rather than from serde's English.

use serde::de::value::{MapDeserializer, SeqDeserializer, StringDeserializer};
use serde::de::{self, Deserializer, Expected, IntoDeserializer, Unexpected, Visitor};
use serde_json::Value;
use std::fmt;
use std::marker::PhantomData;

/// One schema error, as the `Deserialize` impls reported it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SchemaError {
    /// A required key is absent.
    MissingField(&'static str),
    /// A key the table does not take; `expected` lists the keys it does take.
    UnknownField {
        field: String,
        expected: &'static [&'static str],
    },
    /// A value of an enumeration that does not exist; `expected` lists those that do.
    UnknownVariant {
        variant: String,
        expected: &'static [&'static str],
    },
    /// A value of the wrong type: what was found (serde's words, e.g. "integer `5`") and
    /// what was expected (the visitor's `expecting`).
    InvalidType { found: String, expected: String },
    /// A value of the right type that is out of range.
    InvalidValue { found: String, expected: String },
    /// A list or table of the wrong length.
    InvalidLength { len: usize, expected: String },
    /// A message written by one of the config's own types (`invalid duration ...`).
    Custom(String),
}

impl fmt::Display for SchemaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingField(field) => write!(f, "missing field `{field}`"),
            Self::UnknownField { field, .. } => write!(f, "unknown field `{field}`"),
            Self::UnknownVariant { variant, .. } => write!(f, "unknown variant `{variant}`"),
            Self::InvalidType { found, expected } => {
                write!(f, "invalid type: {found}, expected {expected}")
            }
            Self::InvalidValue { found, expected } => {
                write!(f, "invalid value: {found}, expected {expected}")
            }
            Self::InvalidLength { len, expected } => {
                write!(f, "invalid length {len}, expected {expected}")
            }
            Self::Custom(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SchemaError {}

impl de::Error for SchemaError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self::Custom(msg.to_string())
    }

    fn missing_field(field: &'static str) -> Self {
        Self::MissingField(field)
    }

    fn unknown_field(field: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownField {
            field: field.to_owned(),
            expected,
        }
    }

    fn unknown_variant(variant: &str, expected: &'static [&'static str]) -> Self {
        Self::UnknownVariant {
            variant: variant.to_owned(),
            expected,
        }
    }

    fn invalid_type(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::InvalidType {
            found: unexpected.to_string(),
            expected: expected.to_string(),
        }
    }

    fn invalid_value(unexpected: Unexpected<'_>, expected: &dyn Expected) -> Self {
        Self::InvalidValue {
            found: unexpected.to_string(),
            expected: expected.to_string(),
        }
    }

    fn invalid_length(len: usize, expected: &dyn Expected) -> Self {
        Self::InvalidLength {
            len,
            expected: expected.to_string(),
        }
    }
}

/// Deserializes one node of the tree, reporting [`SchemaError`]s.
pub(crate) struct ValueDeserializer {
    value: Value,
    _error: PhantomData<SchemaError>,
}

impl ValueDeserializer {
    pub(crate) fn new(value: Value) -> Self {
        Self {
            value,
            _error: PhantomData,
        }
    }
}

impl IntoDeserializer<'_, SchemaError> for ValueDeserializer {
    type Deserializer = Self;
    fn into_deserializer(self) -> Self {
        self
    }
}

/// How serde words a node of the tree in "found ..." (as serde_json's own deserializer does).
fn unexpected(value: &Value) -> Unexpected<'_> {
    match value {
        Value::Null => Unexpected::Unit,
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Unexpected::Unsigned(u)
            } else if let Some(i) = n.as_i64() {
                Unexpected::Signed(i)
            } else {
                Unexpected::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
    }
}

impl<'de> Deserializer<'de> for ValueDeserializer {
    type Error = SchemaError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_string(s),
            Value::Array(items) => {
                let mut seq = SeqDeserializer::new(items.into_iter().map(ValueDeserializer::new));
                let out = visitor.visit_seq(&mut seq)?;
                seq.end()?;
                Ok(out)
            }
            Value::Object(entries) => {
                // A `provider` key comes first: what a resource's other keys mean (a
                // container's, or a provider's own) depends on it, and this way each is
                // judged, and any error reported, at its own key.
                let mut entries: Vec<(String, Value)> = entries.into_iter().collect();
                if let Some(i) = entries.iter().position(|(k, _)| k == "provider") {
                    let first = entries.remove(i);
                    entries.insert(0, first);
                }
                let mut map = MapDeserializer::new(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k, ValueDeserializer::new(v))),
                );
                let out = visitor.visit_map(&mut map)?;
                map.end()?;
                Ok(out)
            }
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, SchemaError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        visitor.visit_newtype_struct(self)
    }

    /// The config's enumerations are all written as strings (`restart = "always"`).
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, SchemaError> {
        match self.value {
            Value::String(s) => {
                let variant: StringDeserializer<SchemaError> = s.into_deserializer();
                visitor.visit_enum(variant)
            }
            other => Err(de::Error::invalid_type(unexpected(&other), &"a string")),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
        identifier ignored_any
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        port: Option<u16>,
        kind: Kind,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Small,
        Large,
    }

    fn de(value: Value) -> Result<Sample, SchemaError> {
        Sample::deserialize(ValueDeserializer::new(value))
    }

    #[test]
    fn reads_what_serde_json_reads() {
        let value = serde_json::json!({"name": "a", "port": null, "kind": "large"});
        assert_eq!(
            de(value).unwrap(),
            Sample {
                name: "a".into(),
                port: None,
                kind: Kind::Large
            }
        );
    }

    #[test]
    fn errors_are_typed() {
        let e = de(serde_json::json!({"name": "a", "kind": "small", "prot": 1})).unwrap_err();
        assert_eq!(
            e,
            SchemaError::UnknownField {
                field: "prot".into(),
                expected: &["name", "port", "kind"]
            }
        );
        let e = de(serde_json::json!({"name": "a"})).unwrap_err();
        assert_eq!(e, SchemaError::MissingField("kind"));
        let e = de(serde_json::json!({"name": "a", "kind": "huge"})).unwrap_err();
        assert_eq!(
            e,
            SchemaError::UnknownVariant {
                variant: "huge".into(),
                expected: &["small", "large"]
            }
        );
        let e = de(serde_json::json!({"name": 5, "kind": "small"})).unwrap_err();
        assert_eq!(
            e,
            SchemaError::InvalidType {
                found: "integer `5`".into(),
                expected: "a string".into()
            }
        );
        let e = de(serde_json::json!({"name": "a", "port": 70000, "kind": "small"})).unwrap_err();
        assert_eq!(
            e,
            SchemaError::InvalidValue {
                found: "integer `70000`".into(),
                expected: "u16".into()
            }
        );
    }
}
