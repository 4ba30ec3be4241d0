//! `labelSelector` and `fieldSelector` query parameters: parsing and matching. Hand-written:
//! kube-core builds selector strings but does not parse them, and the grammar is small.

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Equals,
    NotEquals,
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
    values: Vec<String>,
}

impl Requirement {
    fn matches(&self, value: Option<&str>) -> bool {
        match (&self.op, value) {
            (Op::Equals | Op::In, Some(v)) => self.values.iter().any(|want| want == v),
            (Op::Equals | Op::In, None) => false,
            (Op::NotEquals | Op::NotIn, Some(v)) => !self.values.iter().any(|want| want == v),
            (Op::NotEquals | Op::NotIn, None) => true,
            (Op::Exists, v) => v.is_some(),
            (Op::DoesNotExist, v) => v.is_none(),
        }
    }
}

/// A parsed label selector: all requirements must hold. Empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_terms(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_label_term(term).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "unable to parse requirement: invalid label selector {text:?}: {term:?}"
                ))
            })?);
        }
        Ok(LabelSelector(requirements))
    }

    /// `labels` sorted by key.
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        self.0
            .iter()
            .all(|req| req.matches(lookup(labels, &req.key)))
    }
}

fn lookup<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(k, _)| k.as_str().cmp(key))
        .ok()
        .map(|i| labels[i].1.as_str())
}

/// Splits on commas outside parentheses: `a in (x,y),b` is two terms.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
}

fn parse_label_term(term: &str) -> Option<Requirement> {
    if let Some(key) = term.strip_prefix('!') {
        let key = key.trim();
        return valid_key(key).then(|| Requirement {
            key: key.to_string(),
            op: Op::DoesNotExist,
            values: vec![],
        });
    }
    if let Some((key, value)) = term.split_once("!=") {
        return equality(key, value, Op::NotEquals);
    }
    if let Some((key, value)) = term.split_once("==") {
        return equality(key, value, Op::Equals);
    }
    if let Some((key, value)) = term.split_once('=') {
        return equality(key, value, Op::Equals);
    }
    if let Some(open) = term.find('(') {
        let close = term.rfind(')')?;
        if close != term.len() - 1 || close < open {
            return None;
        }
        let mut head = term[..open].split_whitespace();
        let key = head.next()?;
        let op = match head.next()? {
            "in" => Op::In,
            "notin" => Op::NotIn,
            _ => return None,
        };
        if head.next().is_some() || !valid_key(key) {
            return None;
        }
        let values: Vec<String> = term[open + 1..close]
            .split(',')
            .map(|v| v.trim().to_string())
            .collect();
        if values.iter().any(|v| !valid_value(v)) {
            return None;
        }
        return Some(Requirement {
            key: key.to_string(),
            op,
            values,
        });
    }
    let key = term.trim();
    valid_key(key).then(|| Requirement {
        key: key.to_string(),
        op: Op::Exists,
        values: vec![],
    })
}

fn equality(key: &str, value: &str, op: Op) -> Option<Requirement> {
    let (key, value) = (key.trim(), value.trim());
    (valid_key(key) && valid_value(value)).then(|| Requirement {
        key: key.to_string(),
        op,
        values: vec![value.to_string()],
    })
}

fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 316
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

fn valid_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A parsed field selector: `key=value`, `key==value`, `key!=value`, joined by commas.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(FieldKey, bool, String)>);

/// Which field a term reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldKey {
    Name,
    Namespace,
    /// Index into the resource's extra field keys.
    Extra(usize),
}

impl FieldSelector {
    /// `extra` are the resource's keys beyond `metadata.name` and `metadata.namespace`.
    pub fn parse(text: &str, extra: &[&str]) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for term in text.split(',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (key, equal, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            let key = key.trim();
            let field = match key {
                "metadata.name" => FieldKey::Name,
                "metadata.namespace" => FieldKey::Namespace,
                other => match extra.iter().position(|k| *k == other) {
                    Some(i) => FieldKey::Extra(i),
                    None => {
                        let mut known = vec![
                            "\"metadata.name\"".to_string(),
                            "\"metadata.namespace\"".to_string(),
                        ];
                        known.extend(extra.iter().map(|k| format!("\"{k}\"")));
                        return Err(ApiError::bad_request(format!(
                            "\"{other}\" is not a known field selector: only {}",
                            known.join(", ")
                        )));
                    }
                },
            };
            terms.push((field, equal, value.trim().to_string()));
        }
        Ok(FieldSelector(terms))
    }

    pub fn matches(&self, namespace: &str, name: &str, fields: &[String]) -> bool {
        self.0.iter().all(|(key, equal, want)| {
            let have = match key {
                FieldKey::Name => name,
                FieldKey::Namespace => namespace,
                FieldKey::Extra(i) => fields.get(*i).map(String::as_str).unwrap_or(""),
            };
            (have == want) == *equal
        })
    }

    /// The name this selector pins (`metadata.name=x`), which kubectl and kube-rs use to
    /// watch one object.
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, equal, _)| *key == FieldKey::Name && *equal)
            .map(|(_, _, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn label_selectors_equality_and_sets() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let cases = [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=db", false),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("tier", true),
            ("!tier", false),
            ("missing", false),
            ("!missing", true),
            ("missing!=x", true),
            ("app=web,tier in (front),!missing", true),
            ("app=web,tier=back", false),
        ];
        for (text, want) in cases {
            let sel = LabelSelector::parse(text).unwrap();
            assert_eq!(sel.matches(&l), want, "{text}");
        }
    }

    #[test]
    fn bad_label_selectors_are_400() {
        for text in ["app in web", "a b", "app=(x", "app in (a", "=x"] {
            let err = LabelSelector::parse(text).unwrap_err();
            assert_eq!(err.code, 400, "{text}");
        }
    }

    #[test]
    fn field_selectors() {
        let extra = ["spec.nodeName"];
        let sel =
            FieldSelector::parse("metadata.namespace=default,spec.nodeName!=n2", &extra).unwrap();
        assert!(sel.matches("default", "p", &["n1".to_string()]));
        assert!(!sel.matches("default", "p", &["n2".to_string()]));
        assert!(!sel.matches("other", "p", &["n1".to_string()]));
        let err = FieldSelector::parse("spec.foo=1", &extra).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message.contains("not a known field selector"),
            "{}",
            err.message
        );
        assert_eq!(
            FieldSelector::parse("metadata.name=x", &extra)
                .unwrap()
                .pinned_name(),
            Some("x")
        );
    }
}
