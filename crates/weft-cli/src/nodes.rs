//! What the node-level commands share: which lab and node(s), and the output format.

use anyhow::bail;
use clap::{Args, ValueEnum};
use weft_lab::{NodeSpec, Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// `[--lab NAME] [--node NODE] [-o text|json]`.
#[derive(Args, Clone, Debug)]
pub struct NodeArgs {
    /// The lab.
    #[arg(long, default_value = "weft")]
    pub lab: String,
    /// Only this node (all nodes when omitted).
    #[arg(long)]
    pub node: Option<String>,
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The nodes `node` selects: that one, or all of them.
pub fn select_nodes<'a>(t: &'a Topology, node: Option<&str>) -> anyhow::Result<Vec<&'a NodeSpec>> {
    match node {
        None => Ok(t.nodes.iter().collect()),
        Some(name) => match t.node(name) {
            Some(n) => Ok(vec![n]),
            None => {
                let names: Vec<&str> = t.nodes.iter().map(|n| n.name.as_str()).collect();
                bail!(
                    "lab {} has no node {name} (its nodes: {})",
                    t.name,
                    names.join(", ")
                )
            }
        },
    }
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

    #[test]
    fn an_unknown_node_is_refused_naming_the_known_ones() {
        let t = weft_lab::plan(&weft_lab::LabSpec::with_size("t", 2, 0)).expect("plan");
        assert_eq!(select_nodes(&t, None).expect("all").len(), 2);
        assert_eq!(select_nodes(&t, Some("vps2")).expect("one")[0].name, "vps2");
        let err = select_nodes(&t, Some("vps9"))
            .expect_err("no such node")
            .to_string();
        assert!(
            err.contains("no node vps9") && err.contains("vps1, vps2"),
            "{err}"
        );
    }
}
