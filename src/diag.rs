//! User-facing diagnostics: an error message tied to a place in a recipe or data file,
//! rendered like a compiler error (file:line:col, the offending line, a caret, a hint).

use std::fmt;
use std::path::PathBuf;

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A position in a file; line and column are 1-based.
    File {
        file: PathBuf,
        line: usize,
        col: usize,
    },
    /// A `--set` override given on the command line (1-based index among the overrides).
    Override { index: usize, text: String },
}

impl Location {
    pub fn file(file: impl Into<PathBuf>, line: usize, col: usize) -> Self {
        Location::File {
            file: file.into(),
            line,
            col,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File { file, line, col } => write!(f, "{}:{line}:{col}", file.display()),
            Location::Override { index, text } => write!(f, "--set #{index} ({text})"),
        }
    }
}

/// The most of a line a diagnostic shows (data files can have lines of megabytes).
const SHOWN_CHARS: usize = 160;

/// Line `line` (1-based) of `file`, read no further than needed and cut to [`SHOWN_CHARS`];
/// `None` when the file is not text or has no such line.
fn source_line(file: &std::path::Path, line: usize) -> Option<String> {
    use std::io::BufRead;
    let reader = std::io::BufReader::new(std::fs::File::open(file).ok()?);
    let text = reader.lines().nth(line.saturating_sub(1))?.ok()?;
    if text.chars().count() > SHOWN_CHARS {
        return Some(format!(
            "{}…",
            text.chars().take(SHOWN_CHARS).collect::<String>()
        ));
    }
    Some(text)
}

/// One problem found in user input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    pub help: Option<String>,
    /// The line at the location is not shown (it holds a secret: a credential in a recipe
    /// should not be copied into a terminal's or a CI job's log).
    pub hide_line: bool,
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            location: None,
            help: None,
            hide_line: false,
        }
    }
    /// Points at the location without showing its line (see [`Diagnostic::hide_line`]).
    pub fn without_line(mut self) -> Self {
        self.hide_line = true;
        self
    }
    pub fn at(mut self, location: Option<Location>) -> Self {
        if self.location.is_none() {
            self.location = location;
        }
        self
    }
    pub fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
    pub fn maybe_help(mut self, help: Option<String>) -> Self {
        if help.is_some() {
            self.help = help;
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "error: {}", self.message)?;
        match &self.location {
            Some(loc @ Location::File { file, line, col }) => {
                writeln!(f, "  --> {loc}")?;
                if let Some(text) = source_line(file, *line).filter(|_| !self.hide_line) {
                    let gutter = line.to_string().len();
                    writeln!(f, "{:gutter$} |", "")?;
                    writeln!(f, "{line} | {text}")?;
                    if *col <= SHOWN_CHARS {
                        writeln!(f, "{:gutter$} | {:>width$}", "", "^", width = (*col).max(1))?;
                    }
                }
            }
            Some(loc) => writeln!(f, "  --> {loc}")?,
            None => {}
        }
        if let Some(help) = &self.help {
            writeln!(f, "  = help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in one pass over user input; an `Error` so it travels through `?`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    pub fn push(&mut self, d: Diagnostic) {
        self.0.push(d);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_result<T>(self, ok: T) -> Result<T, Diagnostics> {
        if self.0.is_empty() { Ok(ok) } else { Err(self) }
    }
}

impl From<Diagnostic> for Diagnostics {
    fn from(d: Diagnostic) -> Self {
        Diagnostics(vec![d])
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.0 {
            writeln!(f, "{d}")?;
        }
        match self.0.len() {
            0 => Ok(()),
            1 => write!(f, "1 error"),
            n => write!(f, "{n} errors"),
        }
    }
}

impl std::error::Error for Diagnostics {}

/// An error in user-supplied data found while running (a bad row, a missing column): it exits
/// with code 2 like a recipe error, not 1 like a failure of hone or the machine.
pub fn input_error(d: Diagnostic) -> anyhow::Error {
    anyhow::Error::new(Diagnostics::from(d))
}

/// The closest candidate to `word`, if any is close enough to be a plausible typo.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), c))
        .filter(|(d, c)| *d <= (word.len().max(c.len()) / 3).max(1) + usize::from(word.len() > 5))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Runs `f`, turning a panic inside it into `Err(message)`: for the parsers of other crates
/// (tokenizers, parquet) that can panic on crafted input instead of returning an error. The
/// panic's own report is kept off stderr (on this thread only, while `f` runs), so the user
/// sees hone's error for the file, not a backtrace.
pub fn without_panic<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    use std::cell::Cell;
    use std::panic::{AssertUnwindSafe, catch_unwind};
    thread_local! {
        static CONTAINED: Cell<bool> = const { Cell::new(false) };
    }
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CONTAINED.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let outer = CONTAINED.with(|c| c.replace(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    CONTAINED.with(|c| c.set(outer));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a parser failed".to_owned())
    })
}

/// "did you mean `x`?" when a candidate is close to `word`.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    closest(word, candidates).map(|c| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["epochs", "batch_size", "lr", "warmup_steps"];
        assert_eq!(closest("epoch", keys), Some("epochs"));
        assert_eq!(closest("batchsize", keys), Some("batch_size"));
        assert_eq!(closest("lrr", keys), Some("lr"));
        assert_eq!(closest("tokenizer", keys), None);
    }

    #[test]
    fn a_contained_panic_is_an_error_and_the_next_one_is_not_hidden() {
        assert_eq!(without_panic(|| 2 + 2), Ok(4));
        let err = without_panic(|| -> u8 { panic!("bad header {}", 7) }).unwrap_err();
        assert_eq!(err, "bad header 7");
        // Nested: the inner one restores the outer's state.
        let outer = without_panic(|| {
            let inner = without_panic(|| -> () { panic!("inner") });
            assert_eq!(inner.unwrap_err(), "inner");
            panic!("outer")
        });
        assert_eq!(outer.unwrap_err(), "outer");
    }

    #[test]
    fn renders_file_line_and_caret() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.yaml");
        std::fs::write(&p, "a: 1\nbad: 2\n").unwrap();
        let d = Diagnostic::new("unknown key `bad`")
            .at(Some(Location::file(&p, 2, 1)))
            .help("did you mean `bar`?");
        let s = d.to_string();
        assert!(s.contains("r.yaml:2:1"), "{s}");
        assert!(s.contains("2 | bad: 2"), "{s}");
        assert!(s.contains("help: did you mean `bar`?"), "{s}");
    }
}
