//! Reading the tables stages take as input: a source file (JSONL, CSV, Parquet) or a dataset
//! artifact's splits, and the text of one column.

use anyhow::bail;

use crate::data::table::{self, TABLE_FILE, Table};

/// The values of text column `column` of a dataset input (all its splits), as strings.
pub fn text_column(
    input: &crate::spec::context::ResolvedInput,
    column: &str,
) -> anyhow::Result<Vec<String>> {
    texts_of(
        &read_table(input, crate::spec::settings::MissingPolicy::Null)?,
        column,
    )
}

/// The non-empty strings of `column`.
pub fn texts_of(table: &crate::data::table::Table, column: &str) -> anyhow::Result<Vec<String>> {
    let i = table.indices(&[column.to_owned()], "the stage reads column")?[0];
    Ok(table
        .rows
        .iter()
        .filter_map(|r| {
            r.values[i]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        })
        .collect())
}

/// The rows of a table input: a source file (format from `format:` or its extension) or the
/// selected splits of a dataset artifact, concatenated.
pub fn read_table(
    input: &crate::spec::context::ResolvedInput,
    missing: crate::spec::settings::MissingPolicy,
) -> anyhow::Result<crate::data::table::Table> {
    use crate::spec::context::ResolvedInput;
    use crate::spec::settings::FileFormat;
    match input {
        ResolvedInput::File {
            path,
            label,
            format,
        } => {
            let format = format
                .or_else(|| FileFormat::from_extension(label))
                .unwrap_or(FileFormat::Jsonl);
            crate::data::table::read_file(path, label, format, missing)
        }
        ResolvedInput::Artifact(view) => read_artifact(view, missing),
    }
}

/// A data input's rows by split, `of` turning a table into rows: a whole dataset artifact gives
/// its `train` and `validation` splits; a single split or a file is all training data.
pub fn split_rows<T>(
    input: &crate::spec::context::ResolvedInput,
    of: impl Fn(&crate::data::table::Table) -> anyhow::Result<Vec<T>>,
) -> anyhow::Result<(Vec<T>, Vec<T>)> {
    match input {
        crate::spec::context::ResolvedInput::Artifact(view) if view.outputs.len() > 1 => {
            let part = |split| -> anyhow::Result<Vec<T>> {
                read_split(view, split)?.map_or(Ok(Vec::new()), |t| of(&t))
            };
            Ok((part("train")?, part("validation")?))
        }
        _ => Ok((
            of(&read_table(
                input,
                crate::spec::settings::MissingPolicy::Null,
            )?)?,
            Vec::new(),
        )),
    }
}

/// One split (`train`, `validation`, `test`) of a dataset artifact; `None` when it has none.
pub fn read_split(
    view: &crate::spec::context::ArtifactView,
    split: &str,
) -> anyhow::Result<Option<crate::data::table::Table>> {
    let Some(out) = view.outputs.get(split) else {
        return Ok(None);
    };
    let sub = crate::spec::context::ArtifactView {
        label: view.label.clone(),
        outputs: [(split.to_owned(), out.clone())].into_iter().collect(),
    };
    read_artifact(&sub, crate::spec::settings::MissingPolicy::Null).map(Some)
}

/// The rows of an upstream dataset artifact: its selected splits, concatenated in order.
pub fn read_artifact(
    view: &crate::spec::context::ArtifactView,
    missing: crate::spec::settings::MissingPolicy,
) -> anyhow::Result<crate::data::table::Table> {
    let mut out: Option<Table> = None;
    // Dataset splits in their order; any other table output (a `generate` stage's
    // `responses`) as it is.
    let standard = ["train", "validation", "test"];
    let names: Vec<&str> = if view.outputs.keys().any(|k| standard.contains(&k.as_str())) {
        standard.to_vec()
    } else {
        view.outputs.keys().map(String::as_str).collect()
    };
    for split in names {
        let Some(o) = view.outputs.get(split) else {
            continue;
        };
        let Some(path) = o.files.get(TABLE_FILE) else {
            bail!("`{}` has no {TABLE_FILE} in output `{split}`", view.label)
        };
        let t = table::read_parquet(path, &format!("{}.{split}", view.label), missing)?;
        match &mut out {
            None => out = Some(t),
            Some(acc) => {
                if acc.columns != t.columns {
                    bail!("splits of `{}` have different columns", view.label);
                }
                acc.rows.extend(t.rows);
            }
        }
    }
    out.ok_or_else(|| anyhow::anyhow!("`{}` has no dataset splits", view.label))
}
