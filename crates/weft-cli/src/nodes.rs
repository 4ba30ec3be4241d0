//! What the node-level commands share: which node(s) (see [`crate::address`]) and the output
//! format.

use clap::{Args, ValueEnum};

use crate::address::Address;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `[--socket PATH] [--pin-dir DIR] [--lab NAME [--node NODE]] [-o text|json]`.
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub address: Address,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let width = widths.get(i).copied().unwrap_or(0);
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(headers.to_vec());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_every_column_but_the_last() {
        let rows = vec![
            vec!["10.42.1.10".to_string(), "7".to_string(), "x".to_string()],
            vec!["1.2.3.4".to_string(), "12345".to_string(), "yy".to_string()],
        ];
        assert_eq!(
            table(&["IP", "N", "LAST"], &rows),
            "IP          N      LAST\n10.42.1.10  7      x\n1.2.3.4     12345  yy\n"
        );
    }
}
