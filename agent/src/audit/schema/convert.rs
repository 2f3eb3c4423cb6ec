//! How each Rust type used by [`Event`](crate::audit::Event) maps to an Arrow column: the builder
//! that appends it and the reader that gets it back (tolerating columns that older files lack).
//! The column list itself is in the parent module.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayBuilder, AsArray, BooleanBuilder, Int32Builder, Int64Builder, ListBuilder,
    MapBuilder, MapFieldNames, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Int32Type, Int64Type, TimestampMicrosecondType};
use uuid::Uuid;

use super::SchemaError;
use crate::audit::event::EventKind;
use crate::audit::vocabulary::{
    CloseReason, ConnectionMode, Decision, Flag, LifecycleAction, RecordingStatus, Term,
};

/// How one Rust field type maps to an Arrow column; implemented for every type `Event` uses.
pub(super) trait ColumnValue: Sized {
    type Builder: ArrayBuilder;
    fn builder(capacity: usize) -> Self::Builder;
    fn append(b: &mut Self::Builder, v: &Self);
    /// Reads row `row` of `col` (None: the file predates the column).
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError>;
    fn data_type() -> DataType {
        Self::builder(0).finish().data_type().clone()
    }
    fn nullable() -> bool {
        true
    }
}

fn wrong_type(name: &'static str, expected: DataType, col: &dyn Array) -> SchemaError {
    SchemaError::ColumnType {
        column: name,
        expected: expected.to_string(),
        found: col.data_type().to_string(),
    }
}

fn read_str<'a>(
    col: Option<&'a dyn Array>,
    row: usize,
    name: &'static str,
) -> Result<Option<&'a str>, SchemaError> {
    let Some(col) = col else { return Ok(None) };
    let a = col
        .as_string_opt::<i32>()
        .ok_or_else(|| wrong_type(name, DataType::Utf8, col))?;
    Ok(a.is_valid(row).then(|| a.value(row)))
}

fn read_i64(
    col: Option<&dyn Array>,
    row: usize,
    name: &'static str,
) -> Result<Option<i64>, SchemaError> {
    let Some(col) = col else { return Ok(None) };
    let a = col
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| wrong_type(name, DataType::Int64, col))?;
    Ok(a.is_valid(row).then(|| a.value(row)))
}

pub(super) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Turns microseconds since the epoch back into a `SystemTime`.
pub fn from_micros(us: i64) -> SystemTime {
    if us >= 0 {
        UNIX_EPOCH + Duration::from_micros(us.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_micros(us.unsigned_abs())
    }
}

impl ColumnValue for String {
    type Builder = StringBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 16)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_value(v);
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_str(col, row, name)?
            .map(str::to_owned)
            .ok_or(SchemaError::Missing(name))
    }
    fn nullable() -> bool {
        false
    }
}

impl ColumnValue for Option<String> {
    type Builder = StringBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 8)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(v.as_deref());
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        Ok(read_str(col, row, name)?.map(str::to_owned))
    }
}

impl ColumnValue for Uuid {
    type Builder = StringBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 36)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        b.append_value(v.hyphenated().encode_lower(&mut buf));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let s = read_str(col, row, name)?.ok_or(SchemaError::Missing(name))?;
        Uuid::parse_str(s).map_err(|_| SchemaError::BadValue {
            column: name,
            value: s.to_owned(),
        })
    }
    fn nullable() -> bool {
        false
    }
}

impl ColumnValue for EventKind {
    type Builder = StringBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 8)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_value(v.as_str());
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let s = read_str(col, row, name)?.ok_or(SchemaError::Missing(name))?;
        EventKind::parse(s).ok_or_else(|| SchemaError::BadValue {
            column: name,
            value: s.to_owned(),
        })
    }
    fn nullable() -> bool {
        false
    }
}

impl ColumnValue for SystemTime {
    type Builder = TimestampMicrosecondBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_value(micros(*v));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        <Option<SystemTime>>::read(col, row, name)?.ok_or(SchemaError::Missing(name))
    }
    fn nullable() -> bool {
        false
    }
}

impl ColumnValue for Option<SystemTime> {
    type Builder = TimestampMicrosecondBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(v.map(micros));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let Some(col) = col else { return Ok(None) };
        let a = col
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| wrong_type(name, Self::data_type(), col))?;
        Ok(a.is_valid(row).then(|| from_micros(a.value(row))))
    }
}

impl ColumnValue for Option<u16> {
    type Builder = Int32Builder;
    fn builder(capacity: usize) -> Self::Builder {
        Int32Builder::with_capacity(capacity)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(v.map(i32::from));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let Some(col) = col else { return Ok(None) };
        let a = col
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| wrong_type(name, DataType::Int32, col))?;
        if !a.is_valid(row) {
            return Ok(None);
        }
        let v = a.value(row);
        u16::try_from(v)
            .map(Some)
            .map_err(|_| SchemaError::BadValue {
                column: name,
                value: v.to_string(),
            })
    }
}

impl ColumnValue for Option<u32> {
    type Builder = Int64Builder;
    fn builder(capacity: usize) -> Self::Builder {
        Int64Builder::with_capacity(capacity)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(v.map(i64::from));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_i64(col, row, name)?
            .map(|v| {
                u32::try_from(v).map_err(|_| SchemaError::BadValue {
                    column: name,
                    value: v.to_string(),
                })
            })
            .transpose()
    }
}

impl ColumnValue for Option<u64> {
    type Builder = Int64Builder;
    fn builder(capacity: usize) -> Self::Builder {
        Int64Builder::with_capacity(capacity)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(v.map(|v| i64::try_from(v).unwrap_or(i64::MAX)));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_i64(col, row, name)?
            .map(|v| {
                u64::try_from(v).map_err(|_| SchemaError::BadValue {
                    column: name,
                    value: v.to_string(),
                })
            })
            .transpose()
    }
}

impl ColumnValue for Option<bool> {
    type Builder = BooleanBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        BooleanBuilder::with_capacity(capacity)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        b.append_option(*v);
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let Some(col) = col else { return Ok(None) };
        let a = col
            .as_boolean_opt()
            .ok_or_else(|| wrong_type(name, DataType::Boolean, col))?;
        Ok(a.is_valid(row).then(|| a.value(row)))
    }
}

impl ColumnValue for Option<IpAddr> {
    type Builder = StringBuilder;
    fn builder(capacity: usize) -> Self::Builder {
        StringBuilder::with_capacity(capacity, capacity * 16)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        use std::fmt::Write;
        match v {
            // The builder is a fmt::Write into its value buffer: no temporary String per row.
            Some(ip) => {
                let _ = write!(b, "{ip}");
                b.append_value("");
            }
            None => b.append_null(),
        }
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_str(col, row, name)?
            .map(|s| {
                s.parse().map_err(|_| SchemaError::BadValue {
                    column: name,
                    value: s.to_owned(),
                })
            })
            .transpose()
    }
}

impl ColumnValue for BTreeMap<String, String> {
    type Builder = MapBuilder<StringBuilder, StringBuilder>;
    fn builder(capacity: usize) -> Self::Builder {
        // Parquet's own names for map entries, so every reader sees a standard MAP.
        let names = MapFieldNames {
            entry: "key_value".into(),
            key: "key".into(),
            value: "value".into(),
        };
        MapBuilder::with_capacity(
            Some(names),
            StringBuilder::new(),
            StringBuilder::new(),
            capacity,
        )
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        for (k, val) in v {
            b.keys().append_value(k);
            b.values().append_value(val);
        }
        // Appending a valid entry cannot fail: keys and values were appended in step.
        let _ = b.append(true);
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        let Some(col) = col else {
            return Ok(BTreeMap::new());
        };
        let m = col
            .as_map_opt()
            .ok_or_else(|| wrong_type(name, Self::data_type(), col))?;
        let mut out = BTreeMap::new();
        if m.is_null(row) {
            return Ok(out);
        }
        let entries = m.value(row);
        let keys = entries
            .column(0)
            .as_string_opt::<i32>()
            .ok_or(SchemaError::Missing(name))?;
        let values = entries
            .column(1)
            .as_string_opt::<i32>()
            .ok_or(SchemaError::Missing(name))?;
        for i in 0..entries.len() {
            let v = if values.is_valid(i) {
                values.value(i)
            } else {
                ""
            };
            out.insert(keys.value(i).to_owned(), v.to_owned());
        }
        Ok(out)
    }
    fn nullable() -> bool {
        false
    }
}

/// Appends one row of a list-of-strings column: `texts`, in order.
fn append_texts<S: AsRef<str>>(
    b: &mut ListBuilder<StringBuilder>,
    texts: impl IntoIterator<Item = S>,
) {
    for t in texts {
        b.values().append_value(t);
    }
    b.append(true);
}

/// Reads row `row` of a list-of-strings column, each text turned into a value by `value` (an
/// empty list when the file predates the column or the row is null).
fn read_texts<T>(
    col: Option<&dyn Array>,
    row: usize,
    name: &'static str,
    value: impl FnMut(&str) -> Result<T, SchemaError>,
) -> Result<Vec<T>, SchemaError> {
    let Some(col) = col else {
        return Ok(Vec::new());
    };
    let l = col
        .as_list_opt::<i32>()
        .ok_or_else(|| wrong_type(name, <Vec<String>>::data_type(), col))?;
    if l.is_null(row) {
        return Ok(Vec::new());
    }
    let items = l.value(row);
    let s = items
        .as_string_opt::<i32>()
        .ok_or(SchemaError::Missing(name))?;
    s.iter().flatten().map(value).collect()
}

impl ColumnValue for Vec<String> {
    type Builder = ListBuilder<StringBuilder>;
    fn builder(capacity: usize) -> Self::Builder {
        ListBuilder::with_capacity(StringBuilder::new(), capacity).with_field(Field::new(
            "element",
            DataType::Utf8,
            false,
        ))
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        append_texts(b, v);
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_texts(col, row, name, |s| Ok(s.to_owned()))
    }
    fn nullable() -> bool {
        false
    }
}

/// A value of the vocabulary read back from its text.
fn parse_term<T: Term>(s: &str, name: &'static str) -> Result<T, SchemaError> {
    T::parse(s).map_err(|_| SchemaError::BadValue {
        column: name,
        value: s.to_owned(),
    })
}

/// A vocabulary column: the value's text, dictionary-friendly like any string column.
macro_rules! term_columns {
    ($($t:ty),*) => {$(
        impl ColumnValue for Option<$t> {
            type Builder = StringBuilder;
            fn builder(capacity: usize) -> Self::Builder {
                <Option<String> as ColumnValue>::builder(capacity)
            }
            fn append(b: &mut Self::Builder, v: &Self) {
                b.append_option(v.as_ref().map(Term::text));
            }
            fn read(
                col: Option<&dyn Array>,
                row: usize,
                name: &'static str,
            ) -> Result<Self, SchemaError> {
                read_str(col, row, name)?
                    .map(|s| parse_term(s, name))
                    .transpose()
            }
        }
    )*};
}

term_columns!(
    CloseReason,
    ConnectionMode,
    Decision,
    LifecycleAction,
    RecordingStatus
);

impl ColumnValue for Vec<Flag> {
    type Builder = ListBuilder<StringBuilder>;
    fn builder(capacity: usize) -> Self::Builder {
        <Vec<String> as ColumnValue>::builder(capacity)
    }
    fn append(b: &mut Self::Builder, v: &Self) {
        append_texts(b, v.iter().map(|f| f.as_str()));
    }
    fn read(col: Option<&dyn Array>, row: usize, name: &'static str) -> Result<Self, SchemaError> {
        read_texts(col, row, name, |t| parse_term(t, name))
    }
    fn nullable() -> bool {
        false
    }
}

pub(super) fn field<T: ColumnValue>(
    name: &'static str,
    ocsf: Option<&'static str>,
    doc: &'static str,
) -> Field {
    let mut meta = HashMap::from([("description".to_owned(), doc.to_owned())]);
    if let Some(o) = ocsf {
        meta.insert("ocsf".to_owned(), o.to_owned());
    }
    Field::new(name, T::data_type(), T::nullable()).with_metadata(meta)
}
