//! `${VAR}`, `${VAR:-default}` and `${file:PATH}` in a config file's text.
//!
//! Interpolation runs on the raw YAML text before parsing (as Vector does), so brokers,
//! credentials and paths can come from the environment anywhere in the file:
//! - `${NAME}`: the variable's value; unset or empty and no default is an error.
//! - `${NAME:-default}`: the default when unset or empty; the default may itself hold
//!   `${...}` (`${A:-${B:-x}}`).
//! - `${file:PATH}`: the file's contents without the trailing newline (a Kubernetes
//!   Secret mounted as a file); relative to the working directory.
//! - `$$` is a literal `$`.
//!
//! A name that is empty or not letters, digits and `_` is an error, as is a `${` without
//! its `}`. Every problem is reported with its line, not only the first.
//!
//! What each `${...}` was replaced with is kept ([`Substitution`]), so errors can show
//! `${NAME}` instead of a value that may be a secret (see [`super::redact`]).

/// A problem with one `${...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationIssue {
    pub line: usize,
    pub message: String,
}

/// One `${...}` that took its value from the environment or a file (defaults written in
/// the file are not recorded: they are in the file for anyone to read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Substitution {
    /// `NAME` or `file:PATH`.
    pub name: String,
    pub value: String,
}

/// The interpolated text and what went into it.
#[derive(Debug, Clone, Default)]
pub struct Interpolated {
    pub text: String,
    pub substitutions: Vec<Substitution>,
}

struct Interpolator<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    issues: Vec<InterpolationIssue>,
    substitutions: Vec<Substitution>,
}

/// Replaces every `${...}` in `text` using `lookup` for variables.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, Vec<InterpolationIssue>> {
    let mut state = Interpolator {
        lookup,
        issues: Vec::new(),
        substitutions: Vec::new(),
    };
    let text = state.expand(text, 1);
    if state.issues.is_empty() {
        Ok(Interpolated {
            text,
            substitutions: state.substitutions,
        })
    } else {
        Err(state.issues)
    }
}

/// The index of the `}` closing a `${` whose body starts at `body[0]`, counting nested
/// `${ ... }`.
fn closing_brace(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Where `:-` splits a body into name and default, outside nested `${...}`.
fn default_separator(body: &str) -> Option<usize> {
    let bytes = body.as_bytes();
    let mut depth = 0usize;
    for i in 0..bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => depth += 1,
            b'}' => depth = depth.saturating_sub(1),
            b':' if depth == 0 && bytes.get(i + 1) == Some(&b'-') => return Some(i),
            _ => {}
        }
    }
    None
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Interpolator<'_> {
    /// Expands `text`, which starts on line `line` of the file.
    fn expand(&mut self, text: &str, mut line: usize) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            let (before, after) = rest.split_at(pos);
            line += before.matches('\n').count();
            out.push_str(before);
            if let Some(stripped) = after.strip_prefix("$$") {
                out.push('$');
                rest = stripped;
                continue;
            }
            let Some(body_start) = after.strip_prefix("${") else {
                out.push('$');
                rest = &after[1..];
                continue;
            };
            let Some(end) = closing_brace(body_start) else {
                self.issue(line, "`${` without its closing `}`".into());
                rest = "";
                break;
            };
            let body = &body_start[..end];
            out.push_str(&self.resolve(body, line));
            line += body.matches('\n').count();
            rest = &body_start[end + 1..];
        }
        out.push_str(rest);
        out
    }

    fn issue(&mut self, line: usize, message: String) {
        self.issues.push(InterpolationIssue { line, message });
    }

    /// The value of one `${body}`.
    fn resolve(&mut self, body: &str, line: usize) -> String {
        let (name, default) = match default_separator(body) {
            Some(at) => (body[..at].trim(), Some(&body[at + 2..])),
            None => (body.trim(), None),
        };
        if let Some(path) = name.strip_prefix("file:") {
            return self.read_file(name, path, line);
        }
        if name.is_empty() {
            self.issue(line, format!("`${{{body}}}` has no variable name"));
            return String::new();
        }
        if !valid_name(name) {
            self.issue(
                line,
                format!(
                    "`${{{name}}}`: expected a variable name (letters, digits and `_`) or \
                     `file:PATH`"
                ),
            );
            return String::new();
        }
        if let Some(value) = (self.lookup)(name).filter(|v| !v.is_empty()) {
            self.substitutions.push(Substitution {
                name: name.to_owned(),
                value: value.clone(),
            });
            return value;
        }
        match default {
            Some(default) => self.expand(default, line),
            None => {
                self.issue(
                    line,
                    format!(
                        "environment variable `{name}` is not set and has no default \
                         (write `${{{name}:-default}}` to give one)"
                    ),
                );
                String::new()
            }
        }
    }

    fn read_file(&mut self, name: &str, path: &str, line: usize) -> String {
        match std::fs::read_to_string(path.trim()) {
            Ok(contents) => {
                let value = contents
                    .strip_suffix('\n')
                    .map(|v| v.strip_suffix('\r').unwrap_or(v))
                    .unwrap_or(&contents)
                    .to_owned();
                self.substitutions.push(Substitution {
                    name: name.to_owned(),
                    value: value.clone(),
                });
                value
            }
            Err(e) => {
                self.issue(line, format!("`${{{name}}}`: cannot read the file: {e}"));
                String::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("k1:9092,k2:9092".into()),
            "EMPTY" => Some(String::new()),
            "OTHER" => Some("other".into()),
            _ => None,
        }
    }

    fn text(input: &str) -> String {
        interpolate(input, &env).unwrap().text
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        assert_eq!(
            text("brokers: ${BROKERS}\nout: ${OUT:-/tmp/out}\nempty: ${EMPTY:-fallback}"),
            "brokers: k1:9092,k2:9092\nout: /tmp/out\nempty: fallback"
        );
    }

    #[test]
    fn defaults_may_hold_variables_themselves() {
        assert_eq!(text("a: ${X:-${OTHER}}"), "a: other");
        assert_eq!(text("a: ${X:-${Y:-deep}/x}"), "a: deep/x");
        assert_eq!(text("a: ${X:-}"), "a: ");
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(text("price: $$5 and $x"), "price: $5 and $x");
    }

    #[test]
    fn files_give_their_contents_and_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "s3cret\n").unwrap();
        let done = interpolate(&format!("p: ${{file:{}}}", path.display()), &env).unwrap();
        assert_eq!(done.text, "p: s3cret");
        assert_eq!(done.substitutions[0].value, "s3cret");
        let missing = interpolate("p: ${file:/no/such/file}", &env).unwrap_err();
        assert!(
            missing[0].message.contains("cannot read the file"),
            "{missing:?}"
        );
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let issues = interpolate(
            "a: ${NOPE}\nb: ${:-x}\nc: ${a b}\nd: ${ALSO_NOPE}\ne: ${open",
            &env,
        )
        .unwrap_err();
        let lines: Vec<usize> = issues.iter().map(|i| i.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 5], "{issues:?}");
        assert!(issues[0].message.contains("`NOPE` is not set"));
        assert!(issues[1].message.contains("has no variable name"));
        assert!(issues[2].message.contains("expected a variable name"));
        assert!(issues[4].message.contains("without its closing"));
    }

    #[test]
    fn only_values_from_outside_the_file_are_recorded() {
        let done = interpolate("a: ${BROKERS}\nb: ${NONE:-default}", &env).unwrap();
        assert_eq!(
            done.substitutions,
            vec![Substitution {
                name: "BROKERS".into(),
                value: "k1:9092,k2:9092".into()
            }]
        );
    }
}
