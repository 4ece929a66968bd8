//! "Did you mean ...?": the closest known name to a misspelt one, and the
//! error for an unknown name that lists the valid ones.

use crate::error::Located;
use crate::statement::Spanned;

/// The closest of `candidates` to `word`, if it is close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 3.max(c.len() / 4))
        .min()
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub(super) fn unknown(what: &str, word: &Spanned<String>, valid: &[&str]) -> Located {
    let hint = match did_you_mean(&word.value, valid) {
        Some(s) => format!("did you mean '{s}'? "),
        None => String::new(),
    };
    Located::new(
        word.pos,
        format!(
            "unknown {what} '{}': {hint}valid: {}",
            word.value,
            valid.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::TABLE_OPTIONS;

    #[test]
    fn suggests_close_option_names() {
        assert_eq!(
            did_you_mean("scan.startup.mod", TABLE_OPTIONS),
            Some("scan.startup.mode")
        );
        assert_eq!(did_you_mean("conector", TABLE_OPTIONS), Some("connector"));
        assert_eq!(did_you_mean("zzzzzzzzzzzzzzzzzz", TABLE_OPTIONS), None);
    }
}
