//! Printing the findings: one block per finding (level, code, resource, message, the other
//! resources involved, the fix), the notes, and a summary line; or all of it as JSON.

use std::io::Write;

use serde::Serialize;

use super::finding::{Finding, Level};

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Serialize)]
pub struct Report {
    pub files: usize,
    pub resources: usize,
    pub errors: usize,
    pub warnings: usize,
    pub infos: usize,
    /// Errors first, then by resource.
    pub findings: Vec<Finding>,
    /// What was not checked and why.
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(files: usize, resources: usize, mut findings: Vec<Finding>, notes: Vec<String>) -> Report {
        findings.sort_by(|a, b| {
            (a.level, a.subject(), a.code, &a.message).cmp(&(b.level, b.subject(), b.code, &b.message))
        });
        findings.dedup();
        let count = |level| findings.iter().filter(|f| f.level == level).count();
        Report {
            files,
            resources,
            errors: count(Level::Error),
            warnings: count(Level::Warning),
            infos: count(Level::Info),
            findings,
            notes,
        }
    }

    pub fn print(&self, format: Format) {
        let mut out = std::io::stdout().lock();
        // A closed pipe (`trellis analyze ... | head`) is not worth a panic or an error message.
        let _ = match format {
            Format::Json => serde_json::to_writer_pretty(&mut out, self)
                .map_err(std::io::Error::other)
                .and_then(|()| writeln!(out)),
            Format::Text => self.write_text(&mut out),
        };
    }

    fn write_text(&self, out: &mut impl Write) -> std::io::Result<()> {
        for finding in &self.findings {
            writeln!(out, "{finding}")?;
        }
        for note in &self.notes {
            writeln!(out, "note: {note}")?;
        }
        let scope = format!("{} resource(s) from {} file(s)", self.resources, self.files);
        if self.findings.is_empty() {
            writeln!(out, "no issues found in {scope}")
        } else {
            writeln!(
                out,
                "{} error(s), {} warning(s), {} info(s) in {scope}",
                self.errors, self.warnings, self.infos
            )
        }
    }
}
