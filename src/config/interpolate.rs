//! `${VAR}` / `${VAR:-default}` interpolation of a pipeline file's text.
//!
//! Interpolation runs on the raw YAML text before parsing (as Vector does), so brokers,
//! credentials and paths can come from the environment anywhere in the file. `$$` is a
//! literal `$`. A variable that is unset and has no default is an error that names the
//! line, and every such variable is reported, not just the first.

/// A variable that was referenced but is not set and has no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar {
    pub name: String,
    pub line: usize,
}

/// Replaces every `${NAME}` and `${NAME:-default}` in `text` using `lookup`.
///
/// Returns the interpolated text, or every variable that could not be resolved.
pub fn interpolate(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<MissingVar>> {
    let mut out = String::with_capacity(text.len());
    let mut missing = Vec::new();
    let mut rest = text;
    let mut line = 1;
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
        let Some(end) = body_start.find('}') else {
            // An unterminated `${` is left as text: YAML parsing reports it in context.
            out.push_str(after);
            rest = "";
            break;
        };
        let body = &body_start[..end];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name.trim(), Some(default)),
            None => (body.trim(), None),
        };
        match lookup(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_owned))
        {
            Some(value) => out.push_str(&value),
            None => missing.push(MissingVar {
                name: name.to_owned(),
                line,
            }),
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    if missing.is_empty() {
        Ok(out)
    } else {
        Err(missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "BROKERS" => Some("k1:9092,k2:9092".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let text = "brokers: ${BROKERS}\nout: ${OUT:-/tmp/out}\nempty: ${EMPTY:-fallback}";
        assert_eq!(
            interpolate(text, &env).unwrap(),
            "brokers: k1:9092,k2:9092\nout: /tmp/out\nempty: fallback"
        );
    }

    #[test]
    fn double_dollar_is_a_literal_dollar() {
        assert_eq!(
            interpolate("price: $$5 and $x", &env).unwrap(),
            "price: $5 and $x"
        );
    }

    #[test]
    fn reports_every_missing_variable_with_its_line() {
        let err = interpolate("a: ${NOPE}\nb: 1\nc: ${ALSO_NOPE}", &env).unwrap_err();
        assert_eq!(
            err,
            vec![
                MissingVar {
                    name: "NOPE".into(),
                    line: 1
                },
                MissingVar {
                    name: "ALSO_NOPE".into(),
                    line: 3
                },
            ]
        );
    }
}
