//! Arrow IPC streams for result shaping: Snowflake's `rowsetBase64` and its Arrow chunks are each
//! one IPC *stream* (schema, then record batches), read whole here, rewritten column by column
//! and written back as a stream (no I/O: bytes in, bytes out).
//!
//! The schema that goes back is the one that came, field for field: names, data types, Snowflake's
//! field metadata (`logicalType`, `scale`, `precision`, `charLength`, ...) and the schema's own
//! metadata, which the drivers convert by. Only a masked field changes, and only its nullability,
//! which becomes true, since its cells may now be NULL.
//!
//! Reading is bounded by the input: the decoder slices the batches' buffers out of the bytes
//! given (or copies a misaligned one), never allocating what a header merely declares, and a
//! stream claiming more rows than its bytes could describe is refused before anything is built
//! for those rows.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, LargeStringArray, StringArray, StringViewArray, new_null_array,
};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::ipc::reader::StreamDecoder;
use arrow::ipc::writer::StreamWriter;
use arrow::record_batch::{RecordBatch, RecordBatchOptions};

use super::{MaskedColumn, ShapeError};

/// The most rows a stream may claim per byte of it: every real column costs at least a bit per
/// row (a validity or boolean bitmap), so a larger claim is a forged header, and honouring it
/// would make the masked copy far larger than the input.
const MAX_ROWS_PER_BYTE: usize = 8;

/// An Arrow IPC stream read whole: its schema and its record batches, in order.
#[derive(Debug, Clone)]
pub(super) struct Stream {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

impl Stream {
    /// Reads an IPC stream. Anything the Arrow decoder rejects (garbage, a truncated stream,
    /// bytes after the end-of-stream marker, compressed buffers) is [`ShapeError::Unreadable`].
    pub(super) fn read(bytes: Vec<u8>) -> Result<Stream, ShapeError> {
        let max_rows = bytes.len().saturating_mul(MAX_ROWS_PER_BYTE);
        let mut buffer = Buffer::from(bytes);
        let mut decoder = StreamDecoder::new();
        let mut batches = Vec::new();
        let mut rows = 0usize;
        while !buffer.is_empty() {
            if let Some(batch) = decoder
                .decode(&mut buffer)
                .map_err(|_| ShapeError::Unreadable)?
            {
                rows = rows.saturating_add(batch.num_rows());
                if rows > max_rows {
                    return Err(ShapeError::Unreadable);
                }
                batches.push(batch);
            }
        }
        decoder.finish().map_err(|_| ShapeError::Unreadable)?;
        let schema = decoder.schema().ok_or(ShapeError::Unreadable)?;
        Ok(Stream { schema, batches })
    }

    /// How many rows the stream holds.
    pub(super) fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// Masks `columns` (by position in the schema, as in the response's `rowtype`) and keeps
    /// the first `keep` rows across the batches (all of them when `None`). A masked column the
    /// stream does not have is an error: the stream is not the result the `rowtype` describes.
    pub(super) fn shape(
        self,
        columns: &[MaskedColumn],
        keep: Option<usize>,
    ) -> Result<Stream, ShapeError> {
        let fields = self.schema.fields();
        if columns.iter().any(|c| c.index >= fields.len()) {
            return Err(ShapeError::Unreadable);
        }
        let schema: SchemaRef = Arc::new(Schema::new_with_metadata(
            fields
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    if columns.iter().any(|c| c.index == i) {
                        Arc::new(Field::clone(f).with_nullable(true))
                    } else {
                        f.clone()
                    }
                })
                .collect::<Vec<_>>(),
            self.schema.metadata().clone(),
        ));
        let mut remaining = keep.unwrap_or(usize::MAX);
        let mut batches = Vec::with_capacity(self.batches.len());
        for batch in self.batches {
            if remaining == 0 {
                break;
            }
            let batch = if batch.num_rows() > remaining {
                batch.slice(0, remaining)
            } else {
                batch
            };
            remaining -= batch.num_rows();
            let len = batch.num_rows();
            let arrays: Vec<ArrayRef> = batch
                .columns()
                .iter()
                .enumerate()
                .map(|(i, a)| match columns.iter().find(|c| c.index == i) {
                    Some(c) => masked(a.data_type(), len, c.value),
                    None => a.clone(),
                })
                .collect();
            let options = RecordBatchOptions::new().with_row_count(Some(len));
            batches.push(
                RecordBatch::try_new_with_options(schema.clone(), arrays, &options)
                    .map_err(|_| ShapeError::Unreadable)?,
            );
        }
        Ok(Stream { schema, batches })
    }

    /// Writes the stream back as an IPC stream (schema, batches, end-of-stream marker).
    pub(super) fn write(&self) -> Result<Vec<u8>, ShapeError> {
        let mut out = Vec::new();
        let mut w =
            StreamWriter::try_new(&mut out, &self.schema).map_err(|_| ShapeError::Unreadable)?;
        for b in &self.batches {
            w.write(b).map_err(|_| ShapeError::Unreadable)?;
        }
        w.finish().map_err(|_| ShapeError::Unreadable)?;
        drop(w);
        Ok(out)
    }
}

/// The column a masked one becomes: `text` (a string type in Arrow) gets `value` in every cell,
/// NULLs included, as the JSON path does; any other type (or a text column Arrow carries some
/// other way) is all NULL, the one value every type and every driver's converter accepts.
fn masked(data_type: &DataType, len: usize, value: Option<&str>) -> ArrayRef {
    let cells = || std::iter::repeat_n(value.unwrap_or_default(), len);
    match (data_type, value) {
        (DataType::Utf8, Some(_)) => Arc::new(StringArray::from_iter_values(cells())),
        (DataType::LargeUtf8, Some(_)) => Arc::new(LargeStringArray::from_iter_values(cells())),
        (DataType::Utf8View, Some(_)) => Arc::new(StringViewArray::from_iter_values(cells())),
        _ => new_null_array(data_type, len),
    }
}
