//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), which
//! kubectl's generators (`create namespace`, `create deployment`, `run`, ...) send: the
//! `k8s\0` envelope (`runtime.Unknown`), then the object's message, decoded into the JSON the
//! rest of the server works with.
//!
//! Field numbers and types come from the generated table ([`table`]); JSON field names from
//! the OpenAPI schemas of the same messages (`io.k8s.api.core.v1.PodSpec`), so the two
//! encodings cannot disagree on a name. A field the table does not know is refused, never
//! dropped. Well-known messages get their JSON forms: `Time` (RFC 3339), `Quantity`
//! (string), `IntOrString`, `RawExtension` (embedded JSON).

mod table;
mod wire;

use base64::Engine as _;
use serde_json::{Map, Value};

use self::table::{Field, Kind, Label};
use self::wire::{FIXED64, LENGTH_DELIMITED, Reader, VARINT};

/// The magic prefix of a Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Debug, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body does not start with the k8s protobuf magic")]
    NoMagic,
    #[error("the message is truncated")]
    Truncated,
    #[error("a varint is longer than 64 bits")]
    BadVarint,
    #[error("unknown wire type {0}")]
    WireType(u8),
    #[error("no message {0} is known")]
    UnknownMessage(String),
    #[error("field {number} of {message} is not known to this server")]
    UnknownField { message: String, number: u32 },
    #[error("field {field} of {message} has wire type {wire_type}, which does not fit its type")]
    Mismatch {
        message: String,
        field: String,
        wire_type: u8,
    },
    #[error("a string field of {message} is not UTF-8")]
    NotUtf8 { message: String },
    #[error(
        "the envelope names kind {kind:?} of {api_version:?}, which this endpoint does not take"
    )]
    WrongKind { api_version: String, kind: String },
}

/// What the JSON schema of a message says about a protobuf field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonName {
    /// The field's JSON property.
    Property(String),
    /// The schema has no such property: an embedded (`json:",inline"`) struct when the field
    /// is a message, else a field this server's schemas do not have.
    Absent,
    /// No schema for the message: the camelCase of the field name is used.
    NoSchema,
}

/// Maps a message and a snake_case field name to the field's JSON name.
pub trait FieldNames {
    fn json_name(&self, message: &str, field: &str) -> JsonName;
}

/// A decoded envelope: the object, with `apiVersion` and `kind` from the envelope.
pub fn decode(
    bytes: &[u8],
    candidates: &[(&str, &str, &str)],
    names: &dyn FieldNames,
) -> Result<Value, ProtobufError> {
    let body = bytes.strip_prefix(MAGIC).ok_or(ProtobufError::NoMagic)?;
    let mut reader = Reader::new(body);
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    while !reader.done() {
        match reader.key()? {
            (1, LENGTH_DELIMITED) => {
                let mut meta = Reader::new(reader.length_delimited()?);
                while !meta.done() {
                    match meta.key()? {
                        (1, LENGTH_DELIMITED) => {
                            api_version = utf8(meta.length_delimited()?, "TypeMeta")?
                        }
                        (2, LENGTH_DELIMITED) => kind = utf8(meta.length_delimited()?, "TypeMeta")?,
                        (_, wire_type) => meta.skip(wire_type)?,
                    }
                }
            }
            (2, LENGTH_DELIMITED) => raw = reader.length_delimited()?,
            (_, wire_type) => reader.skip(wire_type)?,
        }
    }
    // The envelope's kind picks the message among those the endpoint takes.
    let message = candidates
        .iter()
        .find(|(version, candidate_kind, _)| *candidate_kind == kind && *version == api_version)
        .map(|(_, _, message)| *message)
        .ok_or_else(|| ProtobufError::WrongKind {
            api_version: api_version.clone(),
            kind: kind.clone(),
        })?;
    let decoder = Decoder {
        messages: table::messages(),
        names,
    };
    let mut object = decoder.message(message, raw)?;
    if let Some(map) = object.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(object)
}

fn utf8(bytes: &[u8], message: &str) -> Result<String, ProtobufError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| ProtobufError::NotUtf8 {
        message: message.to_owned(),
    })
}

const TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "io.k8s.apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "io.k8s.apimachinery.pkg.runtime.RawExtension";

struct Decoder<'a> {
    messages: &'a table::Messages,
    names: &'a dyn FieldNames,
}

/// A field of a well-known message: number, varint value, length-delimited bytes.
type Scalar<'a> = (u32, u64, &'a [u8]);

/// The scalar fields of a well-known message, by number.
fn scalars(bytes: &[u8]) -> Result<Vec<Scalar<'_>>, ProtobufError> {
    let mut reader = Reader::new(bytes);
    let mut fields = Vec::new();
    while !reader.done() {
        let (number, wire_type) = reader.key()?;
        match wire_type {
            VARINT => fields.push((number, reader.varint()?, &[][..])),
            LENGTH_DELIMITED => fields.push((number, 0, reader.length_delimited()?)),
            other => reader.skip(other)?,
        }
    }
    Ok(fields)
}

impl Decoder<'_> {
    fn message(&self, name: &str, bytes: &[u8]) -> Result<Value, ProtobufError> {
        if let Some(value) = self.well_known(name, bytes)? {
            return Ok(value);
        }
        let fields = self
            .messages
            .get(name)
            .ok_or_else(|| ProtobufError::UnknownMessage(name.to_owned()))?;
        let mut object = Map::new();
        let mut reader = Reader::new(bytes);
        while !reader.done() {
            let (number, wire_type) = reader.key()?;
            let field = fields
                .get(&number)
                .ok_or_else(|| ProtobufError::UnknownField {
                    message: name.to_owned(),
                    number,
                })?;
            let key = match self.names.json_name(name, &field.name) {
                JsonName::Property(key) => key,
                JsonName::NoSchema => camel(&field.name),
                // An embedded struct: its fields are the parent's in JSON.
                JsonName::Absent
                    if field.label == Label::Optional && matches!(field.kind, Kind::Message(_)) =>
                {
                    if let Value::Object(inner) = self.value(name, field, wire_type, &mut reader)? {
                        object.extend(inner);
                    }
                    continue;
                }
                JsonName::Absent => {
                    return Err(ProtobufError::UnknownField {
                        message: name.to_owned(),
                        number,
                    });
                }
            };
            match field.label {
                Label::Map => {
                    let (entry_key, entry_value) =
                        self.map_entry(name, field, reader.length_delimited()?)?;
                    let map = object
                        .entry(key)
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Some(map) = map.as_object_mut() {
                        map.insert(entry_key, entry_value);
                    }
                }
                Label::Repeated => {
                    let values = self.repeated(name, field, wire_type, &mut reader)?;
                    let list = object
                        .entry(key)
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(list) = list.as_array_mut() {
                        list.extend(values);
                    }
                }
                Label::Optional => {
                    let value = self.value(name, field, wire_type, &mut reader)?;
                    // Go's encoder writes non-pointer strings and zero Times even when empty;
                    // JSON leaves them out.
                    let empty = value.is_null() || value.as_str() == Some("");
                    if empty {
                        object.remove(&key);
                    } else {
                        object.insert(key, value);
                    }
                }
            }
        }
        Ok(Value::Object(object))
    }

    fn value(
        &self,
        message: &str,
        field: &Field,
        wire_type: u8,
        reader: &mut Reader<'_>,
    ) -> Result<Value, ProtobufError> {
        let mismatch = || ProtobufError::Mismatch {
            message: message.to_owned(),
            field: field.name.clone(),
            wire_type,
        };
        Ok(match (&field.kind, wire_type) {
            (Kind::String, LENGTH_DELIMITED) => {
                Value::String(utf8(reader.length_delimited()?, message)?)
            }
            (Kind::Bytes, LENGTH_DELIMITED) => Value::String(
                base64::engine::general_purpose::STANDARD.encode(reader.length_delimited()?),
            ),
            (Kind::Bool, VARINT) => Value::Bool(reader.varint()? != 0),
            // int32 is sign-extended to 64 bits on the wire.
            (Kind::Int32 | Kind::Int64, VARINT) => Value::from(reader.varint()? as i64),
            (Kind::Double, FIXED64) => Value::from(f64::from_bits(reader.fixed64()?)),
            (Kind::Message(name), LENGTH_DELIMITED) => {
                self.message(name, reader.length_delimited()?)?
            }
            _ => return Err(mismatch()),
        })
    }

    fn repeated(
        &self,
        message: &str,
        field: &Field,
        wire_type: u8,
        reader: &mut Reader<'_>,
    ) -> Result<Vec<Value>, ProtobufError> {
        let packed = wire_type == LENGTH_DELIMITED
            && matches!(
                field.kind,
                Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double
            );
        if !packed {
            return Ok(vec![self.value(message, field, wire_type, reader)?]);
        }
        let mut items = Reader::new(reader.length_delimited()?);
        let element = if field.kind == Kind::Double {
            FIXED64
        } else {
            VARINT
        };
        let mut values = Vec::new();
        while !items.done() {
            values.push(self.value(message, field, element, &mut items)?);
        }
        Ok(values)
    }

    fn map_entry(
        &self,
        message: &str,
        field: &Field,
        bytes: &[u8],
    ) -> Result<(String, Value), ProtobufError> {
        let mut reader = Reader::new(bytes);
        let mut key = String::new();
        let mut value = Value::Null;
        while !reader.done() {
            match reader.key()? {
                (1, LENGTH_DELIMITED) => key = utf8(reader.length_delimited()?, message)?,
                (2, wire_type) => value = self.value(message, field, wire_type, &mut reader)?,
                (_, wire_type) => reader.skip(wire_type)?,
            }
        }
        if value.is_null() {
            value = match field.kind {
                Kind::String | Kind::Bytes => Value::String(String::new()),
                _ => Value::Null,
            };
        }
        Ok((key, value))
    }

    fn well_known(&self, name: &str, bytes: &[u8]) -> Result<Option<Value>, ProtobufError> {
        let text = |bytes: &[u8]| utf8(bytes, name);
        Ok(Some(match name {
            TIME | MICRO_TIME => {
                let fields = scalars(bytes)?;
                let seconds = fields.iter().find(|f| f.0 == 1).map_or(0, |f| f.1 as i64);
                let nanos = fields.iter().find(|f| f.0 == 2).map_or(0, |f| f.1 as i64);
                if seconds == 0 && nanos == 0 {
                    return Ok(Some(Value::Null));
                }
                let format = if name == TIME {
                    "%Y-%m-%dT%H:%M:%SZ"
                } else {
                    "%Y-%m-%dT%H:%M:%S%.6fZ"
                };
                match jiff::Timestamp::new(seconds, nanos as i32) {
                    Ok(time) => Value::String(time.strftime(format).to_string()),
                    Err(_) => Value::Null,
                }
            }
            QUANTITY => {
                let fields = scalars(bytes)?;
                let value = fields
                    .iter()
                    .find(|f| f.0 == 1)
                    .map(|f| text(f.2))
                    .transpose()?;
                Value::String(value.unwrap_or_default())
            }
            INT_OR_STRING => {
                let fields = scalars(bytes)?;
                let is_string = fields.iter().find(|f| f.0 == 1).is_some_and(|f| f.1 == 1);
                if is_string {
                    let value = fields
                        .iter()
                        .find(|f| f.0 == 3)
                        .map(|f| text(f.2))
                        .transpose()?;
                    Value::String(value.unwrap_or_default())
                } else {
                    Value::from(
                        fields
                            .iter()
                            .find(|f| f.0 == 2)
                            .map_or(0, |f| f.1 as i64 as i32),
                    )
                }
            }
            RAW_EXTENSION | FIELDS_V1 => {
                let fields = scalars(bytes)?;
                let raw = fields.iter().find(|f| f.0 == 1).map_or(&[][..], |f| f.2);
                serde_json::from_slice(raw).unwrap_or(Value::Null)
            }
            DURATION => {
                let fields = scalars(bytes)?;
                let nanos = fields.iter().find(|f| f.0 == 1).map_or(0, |f| f.1 as i64);
                Value::String(go_duration(nanos))
            }
            _ => return Ok(None),
        }))
    }
}

/// Go's `time.Duration.String()` for whole and fractional seconds (`1h2m3.5s`, `0s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let total = nanos.unsigned_abs();
    let hours = total / 3_600_000_000_000;
    let minutes = total / 60_000_000_000 % 60;
    let seconds = total % 60_000_000_000;
    let mut text = String::from(sign);
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    let whole = seconds / 1_000_000_000;
    let fraction = seconds % 1_000_000_000;
    if fraction == 0 {
        text.push_str(&format!("{whole}s"));
    } else {
        let digits = format!("{fraction:09}");
        text.push_str(&format!("{whole}.{}s", digits.trim_end_matches('0')));
    }
    text
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for character in snake.chars() {
        if character == '_' {
            upper = true;
        } else if upper {
            out.push(character.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(character);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Camel;
    impl FieldNames for Camel {
        fn json_name(&self, _: &str, _: &str) -> JsonName {
            JsonName::NoSchema
        }
    }

    fn field(number: u32, wire_type: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | u32::from(wire_type)) as u8];
        if wire_type == LENGTH_DELIMITED {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    /// `k8s\0` + `Unknown { typeMeta: v1 Namespace, raw: namespace }`.
    fn namespace_envelope(namespace: &[u8]) -> Vec<u8> {
        let mut type_meta = field(1, LENGTH_DELIMITED, b"v1");
        type_meta.extend(field(2, LENGTH_DELIMITED, b"Namespace"));
        [
            MAGIC.to_vec(),
            field(1, LENGTH_DELIMITED, &type_meta),
            field(2, LENGTH_DELIMITED, namespace),
        ]
        .concat()
    }

    fn decode_namespace(envelope: &[u8]) -> Result<Value, ProtobufError> {
        decode(
            envelope,
            &[("v1", "Namespace", "io.k8s.api.core.v1.Namespace")],
            &Camel,
        )
    }

    #[test]
    fn a_namespace_envelope() {
        // ObjectMeta { name: "demo", labels: {a: b}, creationTimestamp: zero }
        let mut labels_entry = field(1, LENGTH_DELIMITED, b"a");
        labels_entry.extend(field(2, LENGTH_DELIMITED, b"b"));
        let mut meta = field(1, LENGTH_DELIMITED, b"demo");
        meta.extend(field(2, LENGTH_DELIMITED, b""));
        meta.extend(field(8, LENGTH_DELIMITED, &[]));
        meta.extend(field(11, LENGTH_DELIMITED, &labels_entry));
        let namespace = [
            field(1, LENGTH_DELIMITED, &meta),
            field(2, LENGTH_DELIMITED, &[]),
            field(3, LENGTH_DELIMITED, &[]),
        ]
        .concat();
        let envelope = namespace_envelope(&namespace);
        let object = decode_namespace(&envelope).unwrap();
        assert_eq!(object["kind"], "Namespace");
        assert_eq!(object["metadata"]["name"], "demo");
        assert_eq!(object["metadata"]["labels"]["a"], "b");
        assert!(object["metadata"].get("generateName").is_none());
        assert!(object["metadata"].get("creationTimestamp").is_none());
        assert_eq!(object["spec"], serde_json::json!({}));
        let wrong = decode(
            &envelope,
            &[("v1", "ConfigMap", "io.k8s.api.core.v1.ConfigMap")],
            &Camel,
        );
        assert!(matches!(wrong, Err(ProtobufError::WrongKind { .. })));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let namespace = field(9, VARINT, &[1]);
        let envelope = namespace_envelope(&namespace);
        let error = decode_namespace(&envelope).unwrap_err();
        assert_eq!(
            error.to_string(),
            "field 9 of io.k8s.api.core.v1.Namespace is not known to this server"
        );
    }

    #[test]
    fn durations_as_go_prints_them() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
    }
}
