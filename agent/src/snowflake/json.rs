//! JSON helpers shared by the parsers: sanitised errors, order-preserving raw objects for
//! rewriting, and deserialisers that count or measure without keeping values.

use std::fmt;

use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{JsonErrorKind, ParseError, RewriteError};

/// Turns a serde_json error into a [`ParseError`] that never quotes the input.
pub(crate) fn sanitize(what: &'static str, err: &serde_json::Error) -> ParseError {
    use serde_json::error::Category;
    let kind = match err.classify() {
        Category::Data => JsonErrorKind::Shape,
        Category::Eof => JsonErrorKind::Truncated,
        Category::Syntax | Category::Io => JsonErrorKind::Syntax,
    };
    // serde's text for these two names a key and never a value; every other message may quote
    // the offending value, so it is replaced.
    let text = err.to_string();
    let detail = ["duplicate field `", "missing field `"]
        .iter()
        .find(|prefix| text.starts_with(*prefix))
        .and_then(|_| text.split(" at line ").next())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            match kind {
                JsonErrorKind::Shape => "a value has the wrong type or shape",
                JsonErrorKind::Truncated => "unexpected end of input",
                JsonErrorKind::Syntax => "not valid JSON",
            }
            .to_owned()
        });
    ParseError::Json {
        what,
        kind,
        line: err.line(),
        column: err.column(),
        detail,
    }
}

/// Parses a whole body as `T`; trailing bytes other than whitespace are an error.
pub(crate) fn from_slice<T: DeserializeOwned>(
    what: &'static str,
    body: &[u8],
) -> Result<T, ParseError> {
    serde_json::from_slice(body).map_err(|e| sanitize(what, &e))
}

/// Parses a borrowed body as `T` (for raw objects that point into the input).
pub(crate) fn from_slice_borrowed<'a, T: Deserialize<'a>>(
    what: &'static str,
    body: &'a [u8],
) -> Result<T, ParseError> {
    serde_json::from_slice(body).map_err(|e| sanitize(what, &e))
}

/// Deserialises an optional response code that Snowflake sends as a string and a fake server
/// might send as a number.
pub(crate) fn opt_code<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a code as a string or a number")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_option(V)
}

/// The length of a JSON array, counted without keeping its elements.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeqLen(pub(crate) u64);

impl<'de> Deserialize<'de> for SeqLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeqLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeqLen, A::Error> {
                let mut n = 0u64;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(SeqLen(n))
            }
        }
        d.deserialize_seq(V)
    }
}

/// A bind value: a scalar (one row) or an array (one entry per row of an array bind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BindShape {
    /// A single value (string, number, bool, null or object).
    Scalar,
    /// An array of this many values.
    Array(u64),
}

impl<'de> Deserialize<'de> for BindShape {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BindShape;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a bind value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<BindShape, A::Error> {
                let SeqLen(n) = SeqLen::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(BindShape::Array(n))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BindShape, A::Error> {
                IgnoredAny::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(BindShape::Scalar)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
            fn visit_unit<E: de::Error>(self) -> Result<BindShape, E> {
                Ok(BindShape::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// The length in bytes of a JSON string, measured without keeping it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StrLen(pub(crate) usize);

impl<'de> Deserialize<'de> for StrLen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrLen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrLen, E> {
                Ok(StrLen(v.len()))
            }
        }
        d.deserialize_str(V)
    }
}

/// The keys of a JSON object, without its values (e.g. which stage credentials were sent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeysOnly(pub(crate) Vec<String>);

impl<'de> Deserialize<'de> for KeysOnly {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeysOnly;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeysOnly, A::Error> {
                let mut keys = Vec::new();
                while let Some((k, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                    keys.push(k);
                }
                Ok(KeysOnly(keys))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON object read in order, refusing duplicate keys (a map type would keep one of them
/// silently, and Snowflake might keep the other).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UniqueMap<V>(pub(crate) Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for Vis<V> {
            type Value = UniqueMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueMap<V>, A::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    entries.push((key, map.next_value()?));
                }
                Ok(UniqueMap(entries))
            }
        }
        d.deserialize_map(Vis(std::marker::PhantomData))
    }
}

impl UniqueMap<serde_json::Value> {
    /// The entries as a JSON map.
    pub(crate) fn into_map(self) -> serde_json::Map<String, serde_json::Value> {
        self.0.into_iter().collect()
    }
}

/// A value slot of a [`RawObject`]: the input's bytes untouched, or a replacement.
#[derive(Debug)]
pub(crate) enum RawSlot<'a> {
    /// Borrowed from the input, re-emitted byte for byte.
    Borrowed(&'a RawValue),
    /// Written by the agent.
    Owned(Box<RawValue>),
}

impl RawSlot<'_> {
    /// The JSON text of the slot.
    pub(crate) fn get(&self) -> &str {
        match self {
            RawSlot::Borrowed(v) => v.get(),
            RawSlot::Owned(v) => v.get(),
        }
    }
}

impl Serialize for RawSlot<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            RawSlot::Borrowed(v) => v.serialize(s),
            RawSlot::Owned(v) => v.serialize(s),
        }
    }
}

/// A JSON object kept in input order with its values as raw text, so a rewrite changes only the
/// fields it touches. Duplicate keys are refused.
#[derive(Debug, Default)]
pub(crate) struct RawObject<'a> {
    entries: Vec<(String, RawSlot<'a>)>,
}

impl<'a> RawObject<'a> {
    /// Parses `body` as an object.
    pub(crate) fn parse(what: &'static str, body: &'a [u8]) -> Result<Self, ParseError> {
        from_slice_borrowed(what, body)
    }

    /// Parses the raw text of a field as an object.
    pub(crate) fn parse_str(what: &'static str, text: &'a str) -> Result<Self, ParseError> {
        from_slice_borrowed(what, text.as_bytes())
    }

    /// The raw JSON text of `key`, if present.
    pub(crate) fn get(&self, key: &str) -> Option<&RawSlot<'a>> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to a serialisable value, in place if present, else appended.
    pub(crate) fn set<T: Serialize + ?Sized>(
        &mut self,
        what: &'static str,
        key: &str,
        value: &T,
    ) -> Result<(), RewriteError> {
        let raw =
            serde_json::value::to_raw_value(value).map_err(|_| RewriteError::Serialize { what })?;
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some((_, slot)) => *slot = RawSlot::Owned(raw),
            None => self.entries.push((key.to_owned(), RawSlot::Owned(raw))),
        }
        Ok(())
    }

    /// Removes every key `matches` says yes to.
    pub(crate) fn remove_where(&mut self, matches: impl Fn(&str) -> bool) {
        self.entries.retain(|(k, _)| !matches(k));
    }

    /// Removes `key`; true when it was there.
    pub(crate) fn remove(&mut self, key: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(k, _)| k != key);
        self.entries.len() != before
    }

    /// Serialises the object back to bytes.
    pub(crate) fn to_vec(&self, what: &'static str) -> Result<Vec<u8>, RewriteError> {
        serde_json::to_vec(self).map_err(|_| RewriteError::Serialize { what })
    }
}

/// `body` (a JSON object) with its object member `field` changed by `edit`; every byte `edit`
/// leaves alone is kept as sent. The login rewrites (QUERY_TAG, brokered key-pair) share it.
pub(crate) fn edit_member(
    what: &'static str,
    body: &[u8],
    field: &'static str,
    edit: impl FnOnce(&mut RawObject<'_>) -> Result<(), RewriteError>,
) -> Result<Vec<u8>, RewriteError> {
    let mut top = RawObject::parse(what, body)?;
    let text = top
        .get(field)
        .map(|s| s.get().to_owned())
        .ok_or(RewriteError::Absent { what, field })?;
    let mut member =
        RawObject::parse_str(what, &text).map_err(|_| RewriteError::NotAnObject { what, field })?;
    edit(&mut member)?;
    top.set(what, field, &member)?;
    top.to_vec(what)
}

impl<'de: 'a, 'a> Deserialize<'de> for RawObject<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = RawObject<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject<'a>, A::Error> {
                let mut entries: Vec<(String, RawSlot<'a>)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format_args!("duplicate field `{key}`")));
                    }
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key, RawSlot::Borrowed(value)));
                }
                Ok(RawObject { entries })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl Serialize for RawObject<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (k, v) in &self.entries {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// True when the raw JSON text is `null`.
pub(crate) fn is_null(raw: &str) -> bool {
    raw.trim() == "null"
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_quote_the_input() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct T {
            n: u64,
        }
        let err = from_slice::<T>("test", br#"{"n":"hunter2"}"#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = from_slice::<T>("test", br#"{"n":1,"n":2}"#).unwrap_err();
        assert!(err.to_string().contains("duplicate field `n`"), "{err}");
        let err = from_slice::<T>("test", br#"{"n":1"#).unwrap_err();
        assert!(matches!(
            err,
            ParseError::Json {
                kind: JsonErrorKind::Truncated,
                ..
            }
        ));
    }

    #[test]
    fn raw_object_keeps_untouched_values_and_order() {
        let body = br#"{"b": [1, 2 ,3], "a":{"x" : 1},"c":"s"}"#;
        let mut obj = RawObject::parse("t", body).unwrap();
        obj.set("t", "a", &serde_json::json!({"y": 2})).unwrap();
        obj.set("t", "d", "new").unwrap();
        let out = String::from_utf8(obj.to_vec("t").unwrap()).unwrap();
        assert_eq!(out, r#"{"b":[1, 2 ,3],"a":{"y":2},"c":"s","d":"new"}"#);
    }

    #[test]
    fn raw_object_refuses_duplicates_and_non_objects() {
        assert!(RawObject::parse("t", br#"{"a":1,"a":2}"#).is_err());
        assert!(RawObject::parse("t", br#"[1]"#).is_err());
        assert!(RawObject::parse("t", br#"{"a":1} x"#).is_err());
    }

    #[test]
    fn unique_maps() {
        let m: UniqueMap<u8> = serde_json::from_str(r#"{"b":1,"a":2}"#).unwrap();
        assert_eq!(m.0, vec![("b".to_owned(), 1), ("a".to_owned(), 2)]);
        assert!(serde_json::from_str::<UniqueMap<u8>>(r#"{"a":1,"a":2}"#).is_err());
    }

    #[test]
    fn counters() {
        let n: SeqLen = serde_json::from_str("[[1,2],[3],{}]").unwrap();
        assert_eq!(n, SeqLen(3));
        let b: BindShape = serde_json::from_str(r#"["1","2"]"#).unwrap();
        assert_eq!(b, BindShape::Array(2));
        let b: BindShape = serde_json::from_str(r#""1""#).unwrap();
        assert_eq!(b, BindShape::Scalar);
        let s: StrLen = serde_json::from_str(r#""ab\/c""#).unwrap();
        assert_eq!(s, StrLen(4));
        let k: KeysOnly = serde_json::from_str(r#"{"AWS_KEY_ID":"x","AWS_TOKEN":"y"}"#).unwrap();
        assert_eq!(k.0, vec!["AWS_KEY_ID", "AWS_TOKEN"]);
    }
}
