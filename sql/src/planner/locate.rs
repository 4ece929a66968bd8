//! Where in the file an error belongs: DataFusion's and sqlparser's errors
//! mapped to file positions, and words looked up in a query's text for errors
//! that carry no position of their own.

use datafusion::common::DataFusionError;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::ParserError;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::Planner;
use crate::error::{Located, Pos};
use crate::source::pos;
use crate::statement::QuerySpan;

impl Planner<'_> {
    pub(super) fn df_error(&self, e: DataFusionError, query: &QuerySpan) -> Located {
        let at = e
            .diagnostic()
            .and_then(|d| d.span)
            .map(|s| Pos::new(s.start.line, s.start.column))
            .filter(|p| p.line > 0);
        let message = clean_df_message(&e);
        let at = at
            .or_else(|| self.find_named_token(&message, query))
            .unwrap_or(query.pos);
        Located::new(at, message)
    }

    /// For errors DataFusion does not place: point at the first token in the query
    /// that the message names in quotes or as "named X".
    fn find_named_token(&self, message: &str, query: &QuerySpan) -> Option<Pos> {
        let mut names = Vec::new();
        for part in message.split('\'').skip(1).step_by(2) {
            names.push(part.to_string());
        }
        if let Some(i) = message.find("named ") {
            let rest = &message[i + 6..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '.')
                .collect();
            names.push(name.trim_end_matches('.').to_string());
        }
        let text = self.file.masked(query.range.clone(), &[]);
        let dialect = GenericDialect {};
        let tokens = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&dialect, &text)
            .tokenize_with_location()
            .ok()?;
        for name in names {
            let last = name.rsplit('.').next().unwrap_or(&name).to_string();
            for t in &tokens {
                if let Token::Word(w) = &t.token
                    && (w.value == last || w.value.eq_ignore_ascii_case(&last))
                {
                    return Some(pos(t.span.start));
                }
            }
        }
        None
    }

    pub(super) fn group_by_pos(&self, query: &QuerySpan) -> Pos {
        self.find_word(query, "GROUP").unwrap_or(query.pos)
    }

    /// The position of the last word of the first run of `words` (any case,
    /// whitespace between them) in the query.
    pub(super) fn find_words(&self, query: &QuerySpan, words: &[&str]) -> Option<Pos> {
        let text = self.file.masked(query.range.clone(), &[]);
        let dialect = GenericDialect {};
        let tokens = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&dialect, &text)
            .tokenize_with_location()
            .ok()?;
        let tokens: Vec<_> = tokens
            .iter()
            .filter(|t| !matches!(t.token, Token::Whitespace(_)))
            .collect();
        tokens.windows(words.len()).find_map(|run| {
            let all = run.iter().zip(words).all(
                |(t, w)| matches!(&t.token, Token::Word(x) if x.value.eq_ignore_ascii_case(w)),
            );
            all.then(|| pos(run[words.len() - 1].span.start))
        })
    }

    /// The position of `qualifier` in the first `qualifier.name` of the query.
    pub(super) fn find_qualified(
        &self,
        query: &QuerySpan,
        qualifier: &str,
        name: &str,
    ) -> Option<Pos> {
        let text = self.file.masked(query.range.clone(), &[]);
        let dialect = GenericDialect {};
        let tokens = datafusion::sql::sqlparser::tokenizer::Tokenizer::new(&dialect, &text)
            .tokenize_with_location()
            .ok()?;
        let word =
            |t: &Token, w: &str| matches!(t, Token::Word(x) if x.value.eq_ignore_ascii_case(w));
        tokens.windows(3).find_map(|run| {
            (word(&run[0].token, qualifier)
                && run[1].token == Token::Period
                && word(&run[2].token, name))
            .then(|| pos(run[0].span.start))
        })
    }

    /// The position of the first word `word` (any case) in the query.
    pub(super) fn find_word(&self, query: &QuerySpan, word: &str) -> Option<Pos> {
        self.find_words(query, &[word])
    }
}

fn clean_df_message(e: &DataFusionError) -> String {
    let mut m = e.strip_backtrace();
    for prefix in [
        "Error during planning: ",
        "Schema error: ",
        "SQL error: ",
        "Optimizer rule",
        "type_coercion\ncaused by\n",
    ] {
        if let Some(rest) = m.strip_prefix(prefix) {
            m = rest.to_string();
        }
    }
    m.replace("\ncaused by\n", ": ")
}

/// sqlparser reports "... at Line: 3, Column: 5"; move that into the position.
pub(super) fn parser_error(e: ParserError, fallback: Pos) -> Located {
    let msg = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => "the query nests too deeply".to_string(),
    };
    if let Some(i) = msg.rfind(" at Line: ") {
        let tail = &msg[i + " at Line: ".len()..];
        let mut parts = tail.split(", Column: ");
        let line = parts.next().and_then(|l| l.trim().parse::<u64>().ok());
        let column = parts.next().and_then(|c| {
            c.trim()
                .trim_end_matches(|ch: char| !ch.is_ascii_digit())
                .parse::<u64>()
                .ok()
        });
        if let (Some(line), Some(column)) = (line, column) {
            let text = msg[..i]
                .replace("Expected: ", "expected ")
                .replace(", found: ", ", found ");
            return Located::new(Pos::new(line, column), text);
        }
    }
    Located::new(fallback, msg)
}
