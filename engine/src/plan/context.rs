//! Where planning errors point: the pipeline file, a span in it and a key path.

use std::path::Path;

use crate::config::{ConfigError, Span};

/// The pipeline file being planned; every planning error names it.
#[derive(Clone, Copy)]
pub(crate) struct Cx<'a>(pub(crate) &'a Path);

impl Cx<'_> {
    /// An error about the value at `key`, at `span` when known.
    pub(crate) fn at(
        self,
        span: Option<&Span>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::at(self.0, span, key, message)
    }
}

/// Where a planned part is written in the pipeline file, for errors found
/// after building (once the records' schema is known).
#[derive(Debug, Clone)]
pub struct Origin {
    /// Its key path, e.g. `outputs[0].parquet`.
    pub(crate) key: String,
    /// Where it starts.
    pub(crate) span: Span,
}
