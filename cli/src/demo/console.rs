//! Where the demo writes. As a table: on a terminal the table is redrawn in place every second
//! with notes printed above it; otherwise each refresh is printed as plain lines. As JSON: one
//! object per line (`{"tick": ...}` every second, `{"summary": ...}` at the end) on standard
//! output, and notes on standard error.

use std::io::{IsTerminal, Write};

use serde::Serialize;

use super::summary::Summary;
use super::table::{Row, render};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    #[default]
    Table,
    Json,
}

pub struct Console {
    output: Output,
    tty: bool,
    /// Lines of the table on screen, to draw over.
    drawn: usize,
}

#[derive(Serialize)]
struct Tick<'a> {
    seconds: f64,
    title: &'a [String],
    rows: &'a [Row],
}

impl Console {
    pub fn new(output: Output) -> Console {
        Console { output, tty: std::io::stdout().is_terminal(), drawn: 0 }
    }

    /// A message for the user, kept above the live table.
    pub fn note(&mut self, text: &str) {
        match self.output {
            Output::Json => {
                let _ = writeln!(std::io::stderr(), "{text}");
            }
            Output::Table => {
                self.erase();
                out(text);
            }
        }
    }

    fn erase(&mut self) {
        if self.tty && self.drawn > 0 {
            // Up over the table, and clear from there down.
            let _ = write!(std::io::stdout(), "\x1b[{}A\x1b[J", self.drawn);
        }
        self.drawn = 0;
    }

    pub fn table(&mut self, seconds: f64, title: &[String], rows: &[Row]) {
        match self.output {
            Output::Json => out(&serde_json::json!({ "tick": Tick { seconds, title, rows } }).to_string()),
            Output::Table => {
                self.erase();
                let mut out = std::io::stdout().lock();
                let lines: Vec<&String> = title.iter().collect();
                let table = render(rows);
                for line in lines.iter().map(|l| l.as_str()).chain(table.iter().map(String::as_str)) {
                    let _ = writeln!(out, "{line}");
                }
                if self.tty {
                    self.drawn = title.len() + table.len();
                } else {
                    let _ = writeln!(out);
                }
                let _ = out.flush();
            }
        }
    }

    /// The final report; the table drawn last stays on screen above it.
    pub fn summary(&mut self, summary: &Summary) {
        self.drawn = 0;
        match self.output {
            Output::Json => out(&serde_json::json!({ "summary": summary }).to_string()),
            Output::Table => out(&format!("\n{}", summary.text().join("\n"))),
        }
    }
}

/// A line on standard output. A reader that went away (`trellis demo | head`) is no reason to
/// stop: the demo still has to remove what it made.
fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}
