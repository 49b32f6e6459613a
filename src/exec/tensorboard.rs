//! TensorBoard event files, written as TensorBoard reads them: TFRecord framing (a length, its
//! masked CRC-32C, the payload, its masked CRC-32C) around `Event` protocol buffers, the first
//! one naming the file version, each later one holding scalar summaries. Written by hand (the
//! two messages need a dozen lines of protobuf) so hone needs neither TensorFlow nor protoc.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// One `events.out.tfevents.*` file.
pub struct EventWriter {
    file: BufWriter<File>,
    pub path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new event file in it.
    pub fn create(dir: &Path) -> Result<EventWriter> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let now = wall_time();
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| {
                !h.is_empty()
                    && h.chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-.".contains(c))
            })
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}",
            now as u64,
            std::process::id()
        ));
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        let mut w = EventWriter {
            file: BufWriter::new(file),
            path,
        };
        let mut event = Vec::new();
        put_double(&mut event, 1, now);
        put_bytes(&mut event, 3, b"brain.Event:2");
        w.record(&event)?;
        w.flush()?;
        Ok(w)
    }

    /// One event at `step` holding a scalar per `(tag, value)`.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, v) in values {
            let mut value = Vec::new();
            put_bytes(&mut value, 1, tag.as_bytes());
            put_float(&mut value, 2, *v as f32);
            put_bytes(&mut summary, 1, &value);
        }
        let mut event = Vec::new();
        put_double(&mut event, 1, wall_time());
        put_varint_field(&mut event, 2, step as u64);
        put_bytes(&mut event, 5, &summary);
        self.record(&event)
    }

    pub fn flush(&mut self) -> Result<()> {
        Ok(self.file.flush()?)
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.file.write_all(&len)?;
        self.file.write_all(&masked_crc(&len).to_le_bytes())?;
        self.file.write_all(data)?;
        self.file.write_all(&masked_crc(data).to_le_bytes())?;
        Ok(())
    }
}

fn wall_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, v: u64) {
    put_varint(out, u64::from(field) << 3);
    put_varint(out, v);
}

fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    put_varint(out, (u64::from(field) << 3) | 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_float(out: &mut Vec<u8>, field: u32, v: f32) {
    put_varint(out, (u64::from(field) << 3) | 5);
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_varint(out, (u64::from(field) << 3) | 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// CRC-32C (Castagnoli), bit by bit through a table built once.
fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0x82F6_3B78
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masking of a CRC (so a CRC of data holding CRCs stays well mixed).
fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

/// The scalars of an event file: `(step, tag, value)` in order, each record's CRCs checked
/// (what TensorBoard's reader does), for tests and `hone` itself.
pub fn read_scalars(path: &Path) -> Result<Vec<(i64, String, f32)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let header = bytes.get(at..at + 12).context("truncated record header")?;
        let len = u64::from_le_bytes(header[..8].try_into().expect("8 bytes")) as usize;
        anyhow::ensure!(
            u32::from_le_bytes(header[8..].try_into().expect("4 bytes"))
                == masked_crc(&header[..8]),
            "bad length CRC at byte {at}"
        );
        let data = bytes
            .get(at + 12..at + 12 + len)
            .context("truncated record")?;
        let crc = bytes
            .get(at + 12 + len..at + 16 + len)
            .context("truncated record CRC")?;
        anyhow::ensure!(
            u32::from_le_bytes(crc.try_into().expect("4 bytes")) == masked_crc(data),
            "bad data CRC at byte {at}"
        );
        at += 16 + len;
        let mut step = 0i64;
        for (field, value) in fields(data)? {
            match (field, value) {
                (2, Field::Varint(v)) => step = v as i64,
                (5, Field::Bytes(summary)) => {
                    for (_, value) in fields(summary)? {
                        let Field::Bytes(value) = value else { continue };
                        let (mut tag, mut v) = (String::new(), None);
                        for f in fields(value)? {
                            match f {
                                (1, Field::Bytes(t)) => tag = String::from_utf8_lossy(t).into(),
                                (2, Field::Fixed32(x)) => v = Some(f32::from_le_bytes(x)),
                                _ => {}
                            }
                        }
                        if let Some(v) = v {
                            out.push((step, tag, v));
                        }
                    }
                }
                _ => {}
            }
        }
    }
    Ok(out)
}

enum Field<'a> {
    Varint(u64),
    Fixed64,
    Fixed32([u8; 4]),
    Bytes(&'a [u8]),
}

fn fields(mut data: &[u8]) -> Result<Vec<(u64, Field<'_>)>> {
    fn varint(data: &mut &[u8]) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = data.split_first().context("truncated varint")?;
            *data = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        anyhow::bail!("varint too long")
    }
    let mut out = Vec::new();
    while !data.is_empty() {
        let key = varint(&mut data)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut data)?),
            1 => {
                data = data.get(8..).context("truncated fixed64")?;
                Field::Fixed64
            }
            5 => {
                let x = data.get(..4).context("truncated fixed32")?;
                let f = Field::Fixed32(x.try_into().expect("4 bytes"));
                data = &data[4..];
                f
            }
            2 => {
                let n = varint(&mut data)? as usize;
                let b = data.get(..n).context("truncated bytes")?;
                data = &data[n..];
                Field::Bytes(b)
            }
            w => anyhow::bail!("unknown wire type {w}"),
        };
        out.push((key >> 3, field));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // The CRC-32C of "123456789" (RFC 3720's check value).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    /// What PyTorch's `SummaryWriter` wrote (`scripts/make_tensorboard_fixture.py`) reads as
    /// it was written: the framing and messages are TensorBoard's.
    #[test]
    fn a_file_pytorch_wrote_reads_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tensorboard/pytorch.tfevents");
        let got = read_scalars(&path).unwrap();
        let want = [
            (1, "train/loss", 2.5),
            (1, "train/lr", 1e-3),
            (2, "train/loss", 2.0),
            (2, "train/lr", 9e-4),
            (3, "train/loss", 1.25),
            (3, "train/lr", 8e-4),
            (3, "eval/loss", 1.75),
        ];
        assert_eq!(got.len(), want.len(), "{got:?}");
        for ((s, t, v), (ws, wt, wv)) in got.iter().zip(want) {
            assert_eq!((*s, t.as_str(), *v), (ws, wt, wv as f32));
        }
    }

    #[test]
    fn scalars_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(1, &[("train/loss".into(), 2.5), ("train/lr".into(), 1e-3)])
            .unwrap();
        w.scalars(2, &[("train/loss".into(), 2.0)]).unwrap();
        w.flush().unwrap();
        let got = read_scalars(&w.path).unwrap();
        assert_eq!(
            got,
            [
                (1, "train/loss".to_owned(), 2.5),
                (1, "train/lr".to_owned(), 1e-3),
                (2, "train/loss".to_owned(), 2.0)
            ]
        );
    }
}

/// A stage's TensorBoard log: the event file is created with the first record (a stage that
/// logs nothing leaves no file), and a write that fails is warned about once and ends the log,
/// never the run.
pub struct StageLog {
    dir: PathBuf,
    state: std::sync::Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    writer: Option<EventWriter>,
    failed: bool,
    last_step: i64,
}

impl StageLog {
    pub fn new(dir: PathBuf) -> StageLog {
        StageLog {
            dir,
            state: Default::default(),
        }
    }

    /// One point of per-step scalars ([`super::tracking::step_scalars`]).
    pub fn scalars(&self, step: i64, values: &[(String, f64)]) {
        self.write(step, values);
    }

    /// The stage's final metrics (`metrics/<name>`), at its last step.
    pub fn finish(&self, metrics: &serde_json::Map<String, serde_json::Value>) {
        let values: Vec<(String, f64)> = metrics
            .iter()
            .filter_map(|(k, v)| Some((format!("metrics/{k}"), v.as_f64()?)))
            .collect();
        let step = self.state.lock().map(|s| s.last_step).unwrap_or(0);
        self.write(step, &values);
        if let Ok(mut s) = self.state.lock()
            && let Some(w) = s.writer.as_mut()
        {
            let _ = w.flush();
        }
    }

    fn write(&self, step: i64, values: &[(String, f64)]) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.failed || values.is_empty() {
            return;
        }
        s.last_step = s.last_step.max(step);
        let result = match s.writer.as_mut() {
            Some(w) => w.scalars(step, values).and_then(|()| w.flush()),
            None => EventWriter::create(&self.dir).and_then(|mut w| {
                w.scalars(step, values)?;
                w.flush()?;
                s.writer = Some(w);
                Ok(())
            }),
        };
        if let Err(e) = result {
            tracing::warn!(
                "TensorBoard log {}: {e:#}; not logging there any more",
                self.dir.display()
            );
            s.failed = true;
        }
    }
}
