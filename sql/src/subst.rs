//! `${VAR}` and `${VAR:-default}` substitution in WITH values.

/// Substitutes `${VAR}` and `${VAR:-default}` using `lookup`. An unset variable
/// without a default is an error naming it.
pub fn substitute(value: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed '${{' in '{value}'"))?;
        let inner = &after[..end];
        let (name, default) = match inner.find(":-") {
            Some(i) => (&inner[..i], Some(&inner[i + 2..])),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "'${{{inner}}}' is not a variable reference: use ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        match (lookup(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (write ${{{name}:-default}} to give a default)"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SET").then(|| "value".to_string())
    }

    #[test]
    fn substitutes_set_and_default() {
        assert_eq!(substitute("a-${SET}-b", &env).unwrap(), "a-value-b");
        assert_eq!(substitute("${UNSET:-x:9092}", &env).unwrap(), "x:9092");
        assert_eq!(substitute("${SET:-x}", &env).unwrap(), "value");
        assert_eq!(substitute("plain", &env).unwrap(), "plain");
    }

    #[test]
    fn unset_without_default_is_an_error() {
        let err = substitute("${UNSET}", &env).unwrap_err();
        assert!(err.contains("UNSET"), "{err}");
        assert!(substitute("${", &env).is_err());
        assert!(substitute("${A B}", &env).is_err());
    }
}
