//! Configuration errors: every problem found in a file, each with the place it was found.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration, at a place such as `routes[1].backend`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigIssue {
    /// Where in the file: a dotted path with list indices, or `line L column C` for syntax errors.
    pub place: String,
    /// What is wrong and, where it helps, what would be right.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.message)
    }
}

/// All the problems found in one configuration file. A file with any problem is refused whole.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors {
    /// The file the problems were found in.
    pub file: PathBuf,
    /// Every problem, in file order.
    pub issues: Vec<ConfigIssue>,
}

impl ConfigErrors {
    /// A single problem with `file`.
    pub fn one(file: &Path, place: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), issues: vec![ConfigIssue { place: place.into(), message: message.into() }] }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(f, "{}: {} error{}", self.file.display(), n, if n == 1 { "" } else { "s" })?;
        for issue in &self.issues {
            write!(f, "\n  {}: {issue}", self.file.display())?;
        }
        Ok(())
    }
}

/// Collects problems while a configuration is checked, so that all of them are reported at once.
#[derive(Debug, Default)]
pub(crate) struct Issues(pub Vec<ConfigIssue>);

impl Issues {
    pub fn push(&mut self, place: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigIssue { place: place.into(), message: message.into() });
    }
}
