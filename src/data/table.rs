//! Tables: rows of JSON values with typed columns, read from JSONL, CSV or Parquet and written
//! to Parquet through arrow. Every row remembers where it came from, so an error names the file
//! and line.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use serde::Serialize;
use serde_json::Value;

use crate::diag::{Diagnostic, Location, did_you_mean, input_error};

/// The file formats a table is read from, by extension.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl FileFormat {
    pub const ALL: &'static [(&'static str, FileFormat)] = &[
        ("jsonl", FileFormat::Jsonl),
        ("json", FileFormat::Jsonl),
        ("csv", FileFormat::Csv),
        ("parquet", FileFormat::Parquet),
    ];

    pub fn from_extension(path: &str) -> Option<FileFormat> {
        let ext = std::path::Path::new(path)
            .extension()?
            .to_str()?
            .to_ascii_lowercase();
        Self::ALL.iter().find(|(e, _)| *e == ext).map(|(_, f)| *f)
    }
}

/// What a row with a missing column becomes: an error naming the row, or a null.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum MissingPolicy {
    #[default]
    Error,
    Null,
}

/// The file name of a table inside a stored dataset split.
pub const TABLE_FILE: &str = "data.parquet";

/// Field metadata marking a text column that holds JSON (lists, objects such as chat messages).
const JSON_MARK: &str = "hone.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    /// Only nulls so far.
    Null,
    Bool,
    Int,
    Float,
    Text,
    /// Lists and objects, kept as JSON.
    Json,
}

impl ColumnType {
    fn of(v: &Value) -> ColumnType {
        match v {
            Value::Null => ColumnType::Null,
            Value::Bool(_) => ColumnType::Bool,
            Value::Number(n) if n.is_i64() || n.is_u64() => ColumnType::Int,
            Value::Number(_) => ColumnType::Float,
            Value::String(_) => ColumnType::Text,
            Value::Array(_) | Value::Object(_) => ColumnType::Json,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            ColumnType::Null => "nulls",
            ColumnType::Bool => "booleans",
            ColumnType::Int => "integers",
            ColumnType::Float => "numbers",
            ColumnType::Text => "text",
            ColumnType::Json => "lists or objects",
        }
    }

    /// The type of a column holding both; `None` if they do not mix.
    pub fn unify(self, other: ColumnType) -> Option<ColumnType> {
        use ColumnType::*;
        match (self, other) {
            (a, b) if a == b => Some(a),
            (Null, b) => Some(b),
            (a, Null) => Some(a),
            (Int, Float) | (Float, Int) => Some(Float),
            _ => None,
        }
    }
}

/// Where a row came from: a line of a text file, or a row number.
#[derive(Debug, Clone)]
pub struct Row {
    pub values: Vec<Value>,
    /// 1-based line (JSONL, CSV) or row (Parquet) in `Table::source`.
    pub line: usize,
}

#[derive(Debug, Clone)]
pub struct Table {
    /// Label of where the rows came from (a path as the recipe wrote it, or `stage.output`).
    pub source: String,
    /// Whether `Row::line` counts lines of a text file (else rows).
    pub line_numbers: bool,
    pub columns: Vec<String>,
    pub types: Vec<ColumnType>,
    pub rows: Vec<Row>,
}

impl Table {
    /// A table of rows of values, numbered from 1 in order (a stage's own output table).
    pub fn numbered(
        source: impl Into<String>,
        line_numbers: bool,
        columns: &[&str],
        types: Vec<ColumnType>,
        rows: Vec<Vec<Value>>,
    ) -> Table {
        Table {
            source: source.into(),
            line_numbers,
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            types,
            rows: rows
                .into_iter()
                .enumerate()
                .map(|(i, values)| Row {
                    values,
                    line: i + 1,
                })
                .collect(),
        }
    }

    /// A table of `rows` read from `data.jsonl` (line numbers from 1), each column typed by
    /// its first row's value: for tests.
    #[cfg(test)]
    pub fn of_rows(columns: &[&str], rows: Vec<Vec<Value>>) -> Table {
        let types = rows[0].iter().map(ColumnType::of).collect();
        Table::numbered("data.jsonl", true, columns, types, rows)
    }

    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// `source:line` (or `source row N`) for messages.
    pub fn origin(&self, row: &Row) -> String {
        if self.line_numbers {
            format!("{}:{}", self.source, row.line)
        } else {
            format!("{} row {}", self.source, row.line)
        }
    }

    fn missing_column(&self, what: &str, name: &str) -> anyhow::Error {
        let hint = did_you_mean(name, self.columns.iter().map(String::as_str))
            .unwrap_or_else(|| format!("columns: {}", self.columns.join(", ")));
        input_error(
            Diagnostic::new(format!(
                "{what} `{name}`, but {} has no such column",
                self.source
            ))
            .help(hint),
        )
    }

    /// Renames columns (`old -> new`).
    pub fn rename(&mut self, renames: &BTreeMap<String, String>) -> Result<()> {
        for (old, new) in renames {
            let i = self
                .column(old)
                .ok_or_else(|| self.missing_column("`columns` renames", old))?;
            self.columns[i] = new.clone();
        }
        let mut seen = HashSet::new();
        if let Some(dup) = self.columns.iter().find(|c| !seen.insert(c.as_str())) {
            return Err(input_error(Diagnostic::new(format!(
                "after renaming, two columns of {} are named `{dup}`",
                self.source
            ))));
        }
        Ok(())
    }

    /// Keeps only `names`, in that order.
    pub fn select(&mut self, names: &[String]) -> Result<()> {
        let idx: Vec<usize> = names
            .iter()
            .map(|n| {
                self.column(n)
                    .ok_or_else(|| self.missing_column("`select` keeps", n))
            })
            .collect::<Result<_>>()?;
        self.columns = names.to_vec();
        self.types = idx.iter().map(|&i| self.types[i]).collect();
        for row in &mut self.rows {
            row.values = idx
                .iter()
                .map(|&i| std::mem::take(&mut row.values[i]))
                .collect();
        }
        Ok(())
    }

    /// Drops rows equal to an earlier row; returns how many.
    pub fn dedup(&mut self) -> usize {
        let before = self.rows.len();
        // A 32-byte digest per row rather than the row's text keeps memory flat on big tables.
        let mut seen = HashSet::new();
        self.rows.retain(|r| {
            seen.insert(blake3::hash(
                serde_json::to_string(&r.values)
                    .expect("values serialize")
                    .as_bytes(),
            ))
        });
        before - self.rows.len()
    }

    pub fn text_columns(&self) -> Vec<String> {
        self.columns
            .iter()
            .zip(&self.types)
            .filter(|(_, t)| **t == ColumnType::Text)
            .map(|(c, _)| c.clone())
            .collect()
    }

    /// Indices of `names`, or an error naming the missing one.
    pub fn indices(&self, names: &[String], what: &str) -> Result<Vec<usize>> {
        names
            .iter()
            .map(|n| self.column(n).ok_or_else(|| self.missing_column(what, n)))
            .collect()
    }

    /// The rows as JSON objects (for `hone show`).
    pub fn row_objects(&self, limit: usize) -> Vec<Value> {
        self.rows
            .iter()
            .take(limit)
            .map(|r| {
                Value::Object(
                    self.columns
                        .iter()
                        .cloned()
                        .zip(r.values.iter().cloned())
                        .collect(),
                )
            })
            .collect()
    }

    /// A table with the same columns and the given rows.
    pub fn with_rows(&self, rows: Vec<Row>) -> Table {
        Table {
            source: self.source.clone(),
            line_numbers: self.line_numbers,
            columns: self.columns.clone(),
            types: self.types.clone(),
            rows,
        }
    }
}

/// Collects rows as (column -> value) maps, then checks columns and types.
struct Builder {
    source: String,
    path: std::path::PathBuf,
    line_numbers: bool,
    columns: Vec<String>,
    index: HashMap<String, usize>,
    /// Line where each column was first seen, and where its type was fixed.
    first_seen: Vec<usize>,
    types: Vec<(ColumnType, usize)>,
    rows: Vec<(Vec<Option<Value>>, usize)>,
}

impl Builder {
    fn new(source: &str, path: &Path, line_numbers: bool) -> Builder {
        Builder {
            source: source.to_owned(),
            path: path.to_path_buf(),
            line_numbers,
            columns: vec![],
            index: HashMap::new(),
            first_seen: vec![],
            types: vec![],
            rows: vec![],
        }
    }

    fn error(&self, line: usize, col: usize, msg: impl Into<String>) -> anyhow::Error {
        let loc = self
            .line_numbers
            .then(|| Location::file(&self.path, line, col.max(1)));
        let msg = msg.into();
        let msg = if self.line_numbers {
            msg
        } else {
            format!("{msg} (row {line})")
        };
        input_error(Diagnostic::new(msg).at(loc))
    }

    fn push(&mut self, fields: Vec<(String, Value)>, line: usize) -> Result<()> {
        let mut row: Vec<Option<Value>> = vec![None; self.columns.len()];
        for (name, value) in fields {
            let i = match self.index.get(&name) {
                Some(&i) => i,
                None => {
                    self.index.insert(name.clone(), self.columns.len());
                    self.columns.push(name);
                    self.first_seen.push(line);
                    self.types.push((ColumnType::Null, line));
                    row.push(None);
                    self.columns.len() - 1
                }
            };
            let t = ColumnType::of(&value);
            let (have, since) = self.types[i];
            match have.unify(t) {
                Some(u) => {
                    if have == ColumnType::Null && u != ColumnType::Null {
                        self.types[i] = (u, line);
                    } else {
                        self.types[i].0 = u;
                    }
                }
                None => {
                    return Err(self.error(
                        line,
                        1,
                        format!(
                            "column `{}` holds {} here but {} on line {since}",
                            self.columns[i],
                            t.describe(),
                            have.describe()
                        ),
                    ));
                }
            }
            row[i] = Some(value);
        }
        self.rows.push((row, line));
        Ok(())
    }

    fn finish(mut self, missing: MissingPolicy) -> Result<Table> {
        let n = self.columns.len();
        let raw = std::mem::take(&mut self.rows);
        let mut rows = Vec::with_capacity(raw.len());
        for (mut values, line) in raw {
            values.resize(n, None);
            if missing == MissingPolicy::Error
                && let Some(i) = values.iter().position(Option::is_none)
            {
                return Err(self
                    .error(line, 1, format!("row has no column `{}` (line {} has it)", self.columns[i], self.first_seen[i]))
                    .context("set `missing: null` on the dataset stage to accept rows without some columns"));
            }
            let values = values
                .into_iter()
                .zip(&self.types)
                .map(|(v, (t, _))| match (v, t) {
                    // A float column holds floats even where the file wrote `1`.
                    (Some(Value::Number(n)), ColumnType::Float) => {
                        n.as_f64().map_or(Value::Null, Value::from)
                    }
                    (v, _) => v.unwrap_or_default(),
                })
                .collect();
            rows.push(Row { values, line });
        }
        if rows.is_empty() {
            return Err(input_error(Diagnostic::new(format!(
                "{} has no rows",
                self.source
            ))));
        }
        Ok(Table {
            source: self.source,
            line_numbers: self.line_numbers,
            columns: self.columns,
            types: self.types.into_iter().map(|(t, _)| t).collect(),
            rows,
        })
    }
}

/// A JSON object with its keys in file order (serde_json's map sorts them), so columns keep
/// the order the data has.
struct OrderedObject(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(OrderedObject(fields))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Reads a source file.
pub fn read_file(
    path: &Path,
    label: &str,
    format: FileFormat,
    missing: MissingPolicy,
) -> Result<Table> {
    match format {
        FileFormat::Jsonl => read_jsonl(path, label, missing),
        FileFormat::Csv => read_csv(path, label, missing),
        FileFormat::Parquet => read_parquet(path, label, missing),
    }
}

fn read_jsonl(path: &Path, label: &str, missing: MissingPolicy) -> Result<Table> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {label}"))?;
    let mut b = Builder::new(label, path, true);
    let text = match String::from_utf8(bytes) {
        Ok(text) => text,
        Err(e) => {
            // The line and column (in characters) of the first byte that is not UTF-8.
            let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let good = std::str::from_utf8(good).unwrap_or_default();
            let line = good.matches('\n').count() + 1;
            let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            return Err(b.error(
                line,
                col,
                "not UTF-8 text: JSONL files are UTF-8 (re-encode the file, e.g. with iconv)",
            ));
        }
    };
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        if line.trim().is_empty() {
            continue;
        }
        let obj: OrderedObject = serde_json::from_str(line).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => b.error(
                line_no,
                1,
                "each line of a JSONL file must be a JSON object (`{\"column\": value, ...}`)",
            ),
            _ => b.error(line_no, e.column(), format!("invalid JSON: {e}")),
        })?;
        b.push(obj.0, line_no)?;
    }
    b.finish(missing)
}

fn read_csv(path: &Path, label: &str, missing: MissingPolicy) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .with_context(|| format!("cannot read {label}"))?;
    let headers: Vec<String> = reader
        .headers()
        .with_context(|| format!("cannot read the header line of {label}"))?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut b = Builder::new(label, path, true);
    for (i, h) in headers.iter().enumerate() {
        if headers[..i].contains(h) {
            return Err(b.error(
                1,
                1,
                format!("the header names column `{h}` twice; rename one of them"),
            ));
        }
    }
    let mut raw: Vec<(Vec<String>, usize)> = Vec::new();
    for rec in reader.records() {
        let rec = rec.map_err(|e| {
            let line = e.position().map_or(0, |p| p.line() as usize);
            b.error(line, 1, format!("bad CSV record: {e}"))
        })?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        raw.push((rec.iter().map(str::to_owned).collect(), line));
    }
    // CSV has no types: a column is numeric or boolean when every non-empty cell parses as one.
    let kinds: Vec<CsvCell> = (0..headers.len())
        .map(|i| {
            [CsvCell::Int, CsvCell::Float, CsvCell::Bool]
                .into_iter()
                .find(|k| {
                    raw.iter()
                        .all(|(r, _)| r[i].is_empty() || k.parse(&r[i]).is_some())
                })
                .unwrap_or(CsvCell::Text)
        })
        .collect();
    for (rec, line) in &raw {
        let fields = headers
            .iter()
            .zip(rec)
            .enumerate()
            .map(|(i, (h, cell))| {
                (
                    h.clone(),
                    if cell.is_empty() {
                        Value::Null
                    } else {
                        kinds[i].parse(cell).unwrap_or(Value::Null)
                    },
                )
            })
            .collect();
        b.push(fields, *line)?;
    }
    if raw.is_empty() {
        let what = if headers.iter().all(String::is_empty) {
            "is empty: no header line and no rows"
        } else {
            "has a header but no rows"
        };
        return Err(input_error(Diagnostic::new(format!("{label} {what}"))));
    }
    b.finish(missing)
}

/// The type of a CSV column, inferred from its cells.
#[derive(Clone, Copy)]
enum CsvCell {
    Int,
    Float,
    Bool,
    Text,
}

impl CsvCell {
    fn parse(self, s: &str) -> Option<Value> {
        match self {
            CsvCell::Int => s.parse::<i64>().ok().map(Value::from),
            CsvCell::Float => s.parse::<f64>().ok().map(Value::from),
            CsvCell::Bool => match s {
                "true" | "True" | "TRUE" => Some(Value::Bool(true)),
                "false" | "False" | "FALSE" => Some(Value::Bool(false)),
                _ => None,
            },
            CsvCell::Text => Some(Value::String(s.to_owned())),
        }
    }
}

/// Reads a Parquet file (hone's own outputs, or any file of flat columns).
pub fn read_parquet(path: &Path, label: &str, missing: MissingPolicy) -> Result<Table> {
    // The parquet and arrow readers panic on some damaged files (a bitmap shorter than its
    // column) instead of returning an error.
    crate::diag::without_panic(|| read_parquet_checked(path, label, missing)).unwrap_or_else(|e| {
        Err(input_error(
            Diagnostic::new(format!("{label} is not a readable Parquet file: {e}"))
                .at(Some(Location::file(path, 1, 1)))
                .help("check the file's format, or give `format:` in the source"),
        ))
    })
}

fn read_parquet_checked(path: &Path, label: &str, missing: MissingPolicy) -> Result<Table> {
    let file = std::fs::File::open(path).with_context(|| format!("cannot open {label}"))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .and_then(|b| b.build())
        .map_err(|e| {
            input_error(
                Diagnostic::new(format!("{label} is not a readable Parquet file: {e}"))
                    .at(Some(Location::file(path, 1, 1)))
                    .help("check the file's format, or give `format:` in the source"),
            )
        })?;
    let mut b = Builder::new(label, path, false);
    let mut row_no = 0;
    for batch in reader {
        let batch = batch.with_context(|| format!("cannot read {label}"))?;
        let schema = batch.schema();
        let columns: Vec<Vec<Value>> = schema
            .fields()
            .iter()
            .zip(batch.columns())
            .map(|(f, a)| {
                column_values(f, a).with_context(|| format!("{label}: column `{}`", f.name()))
            })
            .collect::<Result<_>>()?;
        for r in 0..batch.num_rows() {
            row_no += 1;
            let fields = schema
                .fields()
                .iter()
                .zip(&columns)
                .map(|(f, c)| (f.name().clone(), c[r].clone()))
                .collect();
            b.push(fields, row_no)?;
        }
    }
    b.finish(missing)
}

fn column_values(field: &Field, array: &ArrayRef) -> Result<Vec<Value>> {
    let is_json = field.metadata().get(JSON_MARK).is_some_and(|v| v == "true");
    let n = array.len();
    let get =
        |i: usize, f: &dyn Fn(usize) -> Value| if array.is_null(i) { Value::Null } else { f(i) };
    Ok(match array.data_type() {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => {
            let a = array.as_boolean();
            (0..n)
                .map(|i| get(i, &|i| Value::Bool(a.value(i))))
                .collect()
        }
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => {
            let cast = arrow::compute::cast(array, &DataType::Int64)?;
            let a = cast.as_primitive::<Int64Type>();
            (0..n)
                .map(|i| get(i, &|i| Value::from(a.value(i))))
                .collect()
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let cast = arrow::compute::cast(array, &DataType::Float64)?;
            let a = cast.as_primitive::<Float64Type>();
            (0..n)
                .map(|i| get(i, &|i| Value::from(a.value(i))))
                .collect()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let cast = arrow::compute::cast(array, &DataType::Utf8)?;
            let a = cast.as_string::<i32>();
            let mut out = Vec::with_capacity(n);
            for i in 0..n {
                out.push(if a.is_null(i) {
                    Value::Null
                } else if is_json {
                    serde_json::from_str(a.value(i)).context("corrupt JSON cell")?
                } else {
                    Value::String(a.value(i).to_owned())
                });
            }
            out
        }
        other => bail!(
            "Parquet type {other} is not supported yet (hone reads text, integers, floats and booleans)"
        ),
    })
}

/// Writes `table` as one Parquet file. Output bytes depend only on the table (no timestamps,
/// no library version string), so identical data gives identical digests.
pub fn write_parquet(table: &Table, path: &Path) -> Result<()> {
    let mut fields = Vec::new();
    let mut arrays: Vec<ArrayRef> = Vec::new();
    for (i, (name, ty)) in table.columns.iter().zip(&table.types).enumerate() {
        let cells = table.rows.iter().map(|r| &r.values[i]);
        let (dt, array): (DataType, ArrayRef) = match ty {
            ColumnType::Bool => (
                DataType::Boolean,
                Arc::new(cells.map(Value::as_bool).collect::<BooleanArray>()),
            ),
            ColumnType::Int => (
                DataType::Int64,
                Arc::new(cells.map(Value::as_i64).collect::<Int64Array>()),
            ),
            ColumnType::Float => (
                DataType::Float64,
                Arc::new(cells.map(Value::as_f64).collect::<Float64Array>()),
            ),
            ColumnType::Text => (
                DataType::Utf8,
                Arc::new(
                    cells
                        .map(|v| v.as_str().map(str::to_owned))
                        .collect::<StringArray>(),
                ),
            ),
            ColumnType::Json | ColumnType::Null => (
                DataType::Utf8,
                Arc::new(
                    cells
                        .map(|v| (!v.is_null()).then(|| v.to_string()))
                        .collect::<StringArray>(),
                ),
            ),
        };
        let mut field = Field::new(name, dt, true);
        if *ty == ColumnType::Json {
            field = field.with_metadata(HashMap::from([(JSON_MARK.to_owned(), "true".to_owned())]));
        }
        fields.push(field);
        arrays.push(array);
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays)?;
    let props = WriterProperties::builder()
        .set_created_by("hone".to_owned())
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let file = std::fs::File::create(path)?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn jsonl_round_trips_through_parquet_with_types() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "a.jsonl",
            "{\"q\":\"hi\",\"n\":1,\"x\":0.5,\"ok\":true,\"m\":[{\"role\":\"user\"}]}\n\n{\"q\":\"yo\",\"n\":2,\"x\":1,\"ok\":null,\"m\":[]}\n",
        );
        let t = read_file(&p, "a.jsonl", FileFormat::Jsonl, MissingPolicy::Error).unwrap();
        assert_eq!(
            t.columns,
            ["q", "n", "x", "ok", "m"],
            "columns keep the file's order"
        );
        assert_eq!(
            t.types,
            [
                ColumnType::Text,
                ColumnType::Int,
                ColumnType::Float,
                ColumnType::Bool,
                ColumnType::Json
            ]
        );
        assert_eq!(t.rows[1].line, 3, "blank lines still count");
        let out = dir.path().join("t.parquet");
        write_parquet(&t, &out).unwrap();
        let back = read_parquet(&out, "t", MissingPolicy::Error).unwrap();
        assert_eq!(back.columns, t.columns);
        assert_eq!(back.types, t.types);
        assert_eq!(back.row_objects(10), t.row_objects(10));
        // Deterministic bytes.
        let out2 = dir.path().join("t2.parquet");
        write_parquet(&t, &out2).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&out2).unwrap());
    }

    #[test]
    fn errors_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let bad = write(dir.path(), "b.jsonl", "{\"q\":\"a\"}\n{\"q\": }\n");
        let e = format!(
            "{:#}",
            read_file(&bad, "b.jsonl", FileFormat::Jsonl, MissingPolicy::Error).unwrap_err()
        );
        assert!(
            e.contains("b.jsonl:2:") && e.contains("invalid JSON"),
            "{e}"
        );
        let typed = write(
            dir.path(),
            "c.jsonl",
            "{\"label\":1}\n{\"label\":\"pos\"}\n",
        );
        let e = format!(
            "{:#}",
            read_file(&typed, "c.jsonl", FileFormat::Jsonl, MissingPolicy::Error).unwrap_err()
        );
        assert!(
            e.contains("c.jsonl:2:")
                && e.contains("column `label` holds text here but integers on line 1"),
            "{e}"
        );
        let missing = write(
            dir.path(),
            "d.jsonl",
            "{\"q\":\"a\",\"r\":\"b\"}\n{\"q\":\"c\"}\n",
        );
        let e = format!(
            "{:#}",
            read_file(&missing, "d.jsonl", FileFormat::Jsonl, MissingPolicy::Error).unwrap_err()
        );
        assert!(
            e.contains("d.jsonl:2:") && e.contains("no column `r`"),
            "{e}"
        );
        let t = read_file(&missing, "d.jsonl", FileFormat::Jsonl, MissingPolicy::Null).unwrap();
        assert_eq!(t.rows[1].values[1], Value::Null);
    }

    #[test]
    fn csv_infers_column_types_and_reports_ragged_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "s.csv",
            "text,label,score\n\"good, really\",1,0.5\nbad,0,\n",
        );
        let t = read_file(&p, "s.csv", FileFormat::Csv, MissingPolicy::Error).unwrap();
        assert_eq!(
            t.types,
            [ColumnType::Text, ColumnType::Int, ColumnType::Float]
        );
        assert_eq!(t.rows[0].values[0], Value::String("good, really".into()));
        let ragged = write(dir.path(), "r.csv", "a,b\n1,2\n3\n");
        let e = format!(
            "{:#}",
            read_file(&ragged, "r.csv", FileFormat::Csv, MissingPolicy::Error).unwrap_err()
        );
        assert!(e.contains("r.csv:3:"), "{e}");
    }
}
