//! `--token-auth-file`: Kubernetes' static token file, so that the file an API server is given
//! (`--token-auth-file` there too) works here unchanged. One CSV line per token:
//!
//! ```text
//! token,user,uid[,"group1,group2"]
//! ```
//!
//! Blank lines are skipped. A line that does not parse, an empty token or user, and a token
//! given twice are errors naming the line: a file that means something else than it says is
//! refused rather than half-used. The file is followed: a change is read once it holds still;
//! a change that does not parse is reported (and counted) and the last good table stays.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use super::{AuthError, refuse};
use crate::ca::metrics::CaMetrics;
use crate::ca::watched::{self, Watched};

/// Users by token.
type Table = HashMap<String, String>;

pub struct TokenFile {
    users: watch::Receiver<Arc<Table>>,
}

impl TokenFile {
    pub fn load(path: PathBuf, metrics: CaMetrics) -> Result<TokenFile, String> {
        let watched = Watched::new(vec![path.clone()]);
        let table = read(&path, &watched)?;
        tracing::info!(file = %path.display(), tokens = table.len(), "CA: token file read");
        let (publish, users) = watch::channel(Arc::new(table));
        watched::follow(watched, publish, Followed { path, metrics });
        Ok(TokenFile { users })
    }

    /// The user a token stands for.
    pub fn user(&self, token: &str) -> Result<String, AuthError> {
        self.users.borrow().get(token).cloned().ok_or_else(|| refuse("unknown token"))
    }
}

/// The token file as [`watched::follow`] rereads it.
struct Followed {
    path: PathBuf,
    metrics: CaMetrics,
}

impl watched::Follow for Followed {
    type Value = Table;
    type Error = String;

    fn read(&mut self, watched: &Watched) -> Result<Table, String> {
        read(&self.path, watched)
    }

    fn same(&self, old: &Table, new: &Table) -> bool {
        old == new
    }

    fn accepted(&mut self, table: &Table) {
        tracing::info!(file = %self.path.display(), tokens = table.len(), "CA: token file reread");
    }

    fn refused(&mut self, error: String) {
        tracing::error!("CA: token file refused, the last good one stays: {error}");
        self.metrics.reload_error(&self.path.display().to_string());
    }
}

fn read(path: &Path, watched: &Watched) -> Result<Table, String> {
    if let Some((_, size)) = watched.oversized() {
        return Err(format!("{}: {size} bytes, more than {}", path.display(), watched::MAX_FILE_BYTES));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse_token_file(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Users by token, from the text of a static token file.
pub fn parse_token_file(text: &str) -> Result<HashMap<String, String>, String> {
    let mut table = HashMap::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = csv_fields(line).map_err(|e| format!("line {number}: {e}"))?;
        if !(3..=4).contains(&fields.len()) {
            return Err(format!(
                "line {number}: {} columns; expected token,user,uid[,\"group1,group2\"] (quote the groups)",
                fields.len()
            ));
        }
        let token = fields[0].trim();
        if token.is_empty() {
            return Err(format!("line {number}: empty token"));
        }
        if fields[1].is_empty() {
            return Err(format!("line {number}: empty user"));
        }
        if let Some(before) = first_seen.insert(token.to_owned(), number) {
            return Err(format!("line {number}: the same token as line {before}"));
        }
        table.insert(token.to_owned(), fields[1].clone());
    }
    Ok(table)
}

/// One CSV record on one line, as Go's `encoding/csv` reads it (what Kubernetes uses):
/// comma-separated, a field may be quoted (`""` inside is a quote), no quote inside an unquoted
/// field.
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    None => return Err("a quoted field is not closed".into()),
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("{c:?} after a quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("a quote inside an unquoted field".into()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kubernetes_static_token_files() {
        let table = parse_token_file(
            "t1,system:serviceaccount:a:x,uid-1\n\
             \n\
             t2,alice,uid-2,\"system:masters,devs\"\r\n\
             t3,\"user, with comma\",\"u\"\"3\"\n",
        )
        .unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(table["t1"], "system:serviceaccount:a:x");
        assert_eq!(table["t2"], "alice");
        assert_eq!(table["t3"], "user, with comma");
    }

    #[test]
    fn malformed_lines_are_errors_naming_the_line() {
        for (text, says) in [
            ("t1,u1,id\nt2,u2\n", "line 2: 2 columns"),
            ("t1,u1,id,g1,g2\n", "line 1: 5 columns"),
            ("t1,u1,id\n\n t1 ,u2,id\n", "line 3: the same token as line 1"),
            (",u1,id\n", "line 1: empty token"),
            ("t1,,id\n", "line 1: empty user"),
            ("t1,u1,id,\"g1,g2\n", "line 1: a quoted field is not closed"),
            ("t1,u1,id, \"g1,g2\"\n", "line 1: a quote inside an unquoted field"),
            ("t1,\"u1\"x,id\n", "line 1: 'x' after a quoted field"),
        ] {
            let err = parse_token_file(text).unwrap_err();
            assert!(err.starts_with(says), "{text:?}: {err}");
        }
    }
}
