//! One file: one parser (the `Cursor` every statement's grammar shares, and the types it returns).
//!
//! Splits a pipeline file into statements and parses the parts that are not
//! plain SQL queries: `SET`, `CREATE TABLE` (columns, metadata columns,
//! `WATERMARK`, `WITH` options), `CREATE MODEL`, `CREATE VIEW ... AS`, and
//! `INSERT INTO ...`. The queries themselves are left as char ranges for the SQL
//! parser; window TVFs inside them are found here (see [`WindowTvf`]).

use std::ops::Range;

use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use crate::error::{LResult, Located, Pos};
use crate::source::{SqlFile, pos};

/// An identifier or string with where it was written.
#[derive(Debug, Clone)]
pub struct Spanned<T> {
    pub value: T,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct ColumnSpec {
    pub name: Spanned<String>,
    /// The type as written, upper-cased, e.g. `TIMESTAMP(3)`, `VARCHAR`.
    pub type_name: Spanned<String>,
    pub not_null: bool,
    /// `METADATA FROM 'key'`: which part of the Kafka record fills it.
    pub metadata: Option<Spanned<String>>,
}

#[derive(Debug, Clone)]
pub struct WatermarkSpec {
    pub column: Spanned<String>,
    pub delay_ms: i64,
}

#[derive(Debug, Clone)]
pub struct OptionSpec {
    pub key: Spanned<String>,
    pub value: Spanned<String>,
}

/// A query's place in the file: a char range, plus the window TVFs and
/// temporal-join clauses found in it.
#[derive(Debug, Clone)]
pub struct QuerySpan {
    pub range: Range<usize>,
    pub pos: Pos,
    pub tvfs: Vec<WindowTvf>,
    pub temporal: Vec<TemporalClause>,
}

/// `tbl FOR SYSTEM_TIME AS OF s.ts` in a JOIN: blanked out before the query
/// reaches DataFusion, and applied to the join whose right side is `table`.
#[derive(Debug, Clone)]
pub struct TemporalClause {
    /// The clause's text range (from FOR to the end of the time column).
    pub range: Range<usize>,
    /// The table it follows.
    pub table: Spanned<String>,
    /// The time column, possibly qualified (`t.ts`): the last part names it.
    pub time: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble {
        size_ms: i64,
    },
    Hop {
        slide_ms: i64,
        size_ms: i64,
    },
    /// Windows that grow by `step_ms` from a start aligned to `size_ms`:
    /// `[s, s + step)`, `[s, s + 2 step)`, ..., `[s, s + size)`.
    Cumulate {
        step_ms: i64,
        size_ms: i64,
    },
    /// Per partition key, rows closer than `gap_ms` (or exactly that far apart)
    /// share a window: `[first ts, last ts + gap)`.
    Session {
        gap_ms: i64,
    },
}

/// `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), INTERVAL ...))` as written in a query.
#[derive(Debug, Clone)]
pub struct WindowTvf {
    pub range: Range<usize>,
    pub pos: Pos,
    pub table: Spanned<String>,
    /// SESSION's `PARTITION BY` columns: sessions are per value of these.
    pub partition_by: Vec<Spanned<String>>,
    pub time_column: Spanned<String>,
    pub kind: WindowKind,
    pub offset_ms: i64,
}

#[derive(Debug, Clone)]
pub enum Statement {
    Set {
        key: Spanned<String>,
        value: Spanned<String>,
    },
    CreateTable {
        name: Spanned<String>,
        columns: Vec<ColumnSpec>,
        watermark: Option<WatermarkSpec>,
        /// `PRIMARY KEY (a, ...) NOT ENFORCED`: a table's key (upsert topics).
        primary_key: Vec<Spanned<String>>,
        options: Vec<OptionSpec>,
    },
    CreateModel {
        name: Spanned<String>,
        options: Vec<OptionSpec>,
    },
    CreateView {
        name: Spanned<String>,
        query: QuerySpan,
    },
    Insert {
        sink: Spanned<String>,
        query: QuerySpan,
    },
}

/// Tokenizes and splits the file into statements.
pub fn parse_statements(file: &SqlFile, text: &str) -> LResult<Vec<Statement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| Located::new(pos(e.location), e.message))?;
    // Comments are whitespace tokens too.
    let tokens: Vec<TokenWithSpan> = tokens
        .into_iter()
        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
        .collect();
    let mut statements = Vec::new();
    let mut start = 0;
    for i in 0..=tokens.len() {
        let end_of_statement = i == tokens.len() || tokens[i].token == Token::SemiColon;
        if end_of_statement {
            if i > start {
                let end_index = if i < tokens.len() {
                    file.index(tokens[i].span.start)
                } else {
                    text.chars().count()
                };
                let mut cursor = Cursor {
                    file,
                    tokens: &tokens[start..i],
                    at: 0,
                    end_index,
                };
                statements.push(cursor.statement()?);
            }
            start = i + 1;
        }
    }
    Ok(statements)
}

struct Cursor<'a> {
    file: &'a SqlFile,
    tokens: &'a [TokenWithSpan],
    at: usize,
    /// Char index where the statement ends (its `;` or the end of file).
    end_index: usize,
}

const STATEMENTS: &str = "SET, CREATE TABLE, CREATE MODEL, CREATE VIEW or INSERT INTO";

impl Cursor<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|t| &t.token)
    }

    fn peek_at(&self, n: usize) -> Option<&Token> {
        self.tokens.get(self.at + n).map(|t| &t.token)
    }

    fn here(&self) -> Pos {
        match self.tokens.get(self.at) {
            Some(t) => pos(t.span.start),
            None => self.file.pos_of_index(self.end_index),
        }
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(t) => format!("'{t}'"),
            None => "the end of the statement".to_string(),
        }
    }

    fn err<T>(&self, expected: &str) -> LResult<T> {
        Err(Located::new(
            self.here(),
            format!("expected {expected}, found {}", self.found()),
        ))
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    fn is_keyword_at(&self, n: usize, word: &str) -> bool {
        matches!(self.peek_at(n), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
    }

    fn eat_keyword(&mut self, word: &str) -> bool {
        if self.is_keyword(word) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect_keyword(&mut self, word: &str) -> LResult<()> {
        if self.eat_keyword(word) {
            Ok(())
        } else {
            self.err(word)
        }
    }

    fn eat(&mut self, token: &Token) -> bool {
        if self.peek() == Some(token) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: Token) -> LResult<()> {
        if self.eat(&token) {
            Ok(())
        } else {
            self.err(&format!("'{token}'"))
        }
    }

    fn ident(&mut self, what: &str) -> LResult<Spanned<String>> {
        let here = self.here();
        match self.peek() {
            Some(Token::Word(w)) => {
                let value = w.value.clone();
                self.at += 1;
                Ok(Spanned { value, pos: here })
            }
            _ => self.err(what),
        }
    }

    /// A possibly dotted name; weir has one catalog, so only the last part counts.
    fn object_name(&mut self, what: &str) -> LResult<Spanned<String>> {
        let mut name = self.ident(what)?;
        while self.eat(&Token::Period) {
            name = self.ident(what)?;
        }
        Ok(name)
    }

    fn string(&mut self, what: &str) -> LResult<Spanned<String>> {
        let here = self.here();
        match self.peek() {
            Some(Token::SingleQuotedString(s)) => {
                let value = s.clone();
                self.at += 1;
                Ok(Spanned { value, pos: here })
            }
            _ => self.err(what),
        }
    }

    fn done(&self) -> LResult<()> {
        if self.at < self.tokens.len() {
            self.err("';' to end the statement")
        } else {
            Ok(())
        }
    }

    fn statement(&mut self) -> LResult<Statement> {
        if self.eat_keyword("SET") {
            let key =
                self.string("a quoted setting name, as in SET 'checkpoint.interval' = '10s'")?;
            self.expect(Token::Eq)?;
            let value = self.string("a quoted value, as in SET 'checkpoint.interval' = '10s'")?;
            self.done()?;
            return Ok(Statement::Set { key, value });
        }
        if self.eat_keyword("CREATE") {
            self.eat_keyword("TEMPORARY");
            if self.eat_keyword("TABLE") {
                return self.create_table();
            }
            if self.eat_keyword("MODEL") {
                let name = self.object_name("a model name")?;
                let options = self.with_options()?;
                self.done()?;
                return Ok(Statement::CreateModel { name, options });
            }
            if self.eat_keyword("VIEW") {
                let name = self.object_name("a view name")?;
                self.expect_keyword("AS")?;
                let query = self.query()?;
                return Ok(Statement::CreateView { name, query });
            }
            return self.err("TABLE, MODEL or VIEW after CREATE");
        }
        if self.eat_keyword("INSERT") {
            self.expect_keyword("INTO")?;
            let sink = self.object_name("the name of a sink table")?;
            let query = self.query()?;
            return Ok(Statement::Insert { sink, query });
        }
        self.err(STATEMENTS)
    }

    fn create_table(&mut self) -> LResult<Statement> {
        let name = self.object_name("a table name")?;
        let mut columns = Vec::new();
        let mut watermark = None;
        let mut primary_key = Vec::new();
        if self.eat(&Token::LParen) {
            loop {
                if self.eat_keyword("WATERMARK") {
                    if watermark.is_some() {
                        return Err(Located::new(
                            self.here(),
                            "a table has at most one WATERMARK",
                        ));
                    }
                    watermark = Some(self.watermark()?);
                } else if self.is_keyword("PRIMARY") || self.is_keyword("CONSTRAINT") {
                    if self.eat_keyword("CONSTRAINT") {
                        self.ident("a constraint name")?;
                    }
                    if !primary_key.is_empty() {
                        return Err(Located::new(
                            self.here(),
                            "a table has at most one PRIMARY KEY",
                        ));
                    }
                    self.expect_keyword("PRIMARY")?;
                    self.expect_keyword("KEY")?;
                    self.expect(Token::LParen)?;
                    loop {
                        primary_key.push(self.ident("a primary key column")?);
                        if !self.eat(&Token::Comma) {
                            break;
                        }
                    }
                    self.expect(Token::RParen)?;
                    if self.eat_keyword("NOT") {
                        self.expect_keyword("ENFORCED")?;
                    }
                } else {
                    columns.push(self.column()?);
                }
                if self.eat(&Token::Comma) {
                    continue;
                }
                self.expect(Token::RParen)?;
                break;
            }
        }
        let options = self.with_options()?;
        self.done()?;
        Ok(Statement::CreateTable {
            name,
            columns,
            watermark,
            primary_key,
            options,
        })
    }

    fn column(&mut self) -> LResult<ColumnSpec> {
        let name = self.ident("a column name, WATERMARK FOR, or ')'")?;
        let type_pos = self.here();
        let mut type_name = match self.peek() {
            Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_uppercase(),
            _ => return self.err(&format!("a type for column {}", name.value)),
        };
        self.at += 1;
        // Two-word types.
        if type_name == "DOUBLE" {
            self.eat_keyword("PRECISION");
        }
        if self.eat(&Token::LParen) {
            let mut args = Vec::new();
            loop {
                match self.peek() {
                    Some(Token::Number(n, _)) => {
                        args.push(n.clone());
                        self.at += 1;
                    }
                    _ => return self.err("a number"),
                }
                if !self.eat(&Token::Comma) {
                    break;
                }
            }
            self.expect(Token::RParen)?;
            type_name = format!("{type_name}({})", args.join(","));
        }
        if self.eat_keyword("WITHOUT") {
            self.expect_keyword("TIME")?;
            self.expect_keyword("ZONE")?;
        }
        let mut not_null = false;
        let mut metadata = None;
        loop {
            if self.eat_keyword("NOT") {
                self.expect_keyword("NULL")?;
                not_null = true;
            } else if self.eat_keyword("NULL") {
            } else if self.eat_keyword("METADATA") {
                if self.eat_keyword("FROM") {
                    metadata = Some(self.string(
                        "a quoted metadata key: 'key', 'timestamp', 'partition' or 'offset'",
                    )?);
                } else {
                    metadata = Some(Spanned {
                        value: name.value.clone(),
                        pos: name.pos,
                    });
                }
                self.eat_keyword("VIRTUAL");
            } else {
                break;
            }
        }
        Ok(ColumnSpec {
            name,
            type_name: Spanned {
                value: type_name,
                pos: type_pos,
            },
            not_null,
            metadata,
        })
    }

    fn watermark(&mut self) -> LResult<WatermarkSpec> {
        self.expect_keyword("FOR")?;
        let column = self.ident("the event-time column")?;
        self.expect_keyword("AS")?;
        let expr_col = self.ident(&format!("'{} - INTERVAL ...'", column.value))?;
        if expr_col.value != column.value {
            return Err(Located::new(
                expr_col.pos,
                format!(
                    "a watermark is written as '{c} - INTERVAL ...' or '{c}' (over the same column)",
                    c = column.value
                ),
            ));
        }
        let delay_ms = if self.eat(&Token::Minus) {
            self.interval()?
        } else {
            0
        };
        Ok(WatermarkSpec { column, delay_ms })
    }

    /// `INTERVAL '5' SECOND`, `INTERVAL '5' SECONDS`, `INTERVAL '5 seconds'`; milliseconds.
    fn interval(&mut self) -> LResult<i64> {
        self.expect_keyword("INTERVAL")?;
        let value = self.string("a quoted amount, as in INTERVAL '5' SECOND")?;
        let (amount, unit_pos, unit) = match value.value.split_whitespace().collect::<Vec<_>>()[..]
        {
            [amount, unit] => (amount.to_string(), value.pos, unit.to_string()),
            [amount] => {
                let here = self.here();
                let unit = match self.peek() {
                    Some(Token::Word(w)) => w.value.clone(),
                    _ => return self.err("a unit: MILLISECOND, SECOND, MINUTE, HOUR or DAY"),
                };
                self.at += 1;
                (amount.to_string(), here, unit)
            }
            _ => {
                return Err(Located::new(
                    value.pos,
                    format!(
                        "'{}' is not an interval: write INTERVAL '5' SECOND",
                        value.value
                    ),
                ));
            }
        };
        let amount: i64 = amount.parse().map_err(|_| {
            Located::new(
                value.pos,
                format!("'{amount}' is not a whole number of units"),
            )
        })?;
        let unit_ms = match unit.to_ascii_uppercase().trim_end_matches('S') {
            "MILLISECOND" => 1,
            "SECOND" => 1_000,
            "MINUTE" => 60_000,
            "HOUR" => 3_600_000,
            "DAY" => 86_400_000,
            _ => {
                return Err(Located::new(
                    unit_pos,
                    format!(
                        "unknown interval unit '{unit}': use MILLISECOND, SECOND, MINUTE, HOUR or DAY"
                    ),
                ));
            }
        };
        Ok(amount * unit_ms)
    }

    fn with_options(&mut self) -> LResult<Vec<OptionSpec>> {
        self.expect_keyword("WITH")?;
        self.expect(Token::LParen)?;
        let mut options = Vec::new();
        if self.eat(&Token::RParen) {
            return Ok(options);
        }
        loop {
            let key = self.string("a quoted option name, as in 'connector' = 'kafka'")?;
            self.expect(Token::Eq)?;
            let value = self.string("a quoted option value")?;
            options.push(OptionSpec { key, value });
            if self.eat(&Token::Comma) {
                continue;
            }
            self.expect(Token::RParen)?;
            return Ok(options);
        }
    }

    /// The rest of the statement is a query; find the window TVFs in it.
    fn query(&mut self) -> LResult<QuerySpan> {
        let Some(first) = self.tokens.get(self.at) else {
            return self.err("a query (SELECT ...)");
        };
        let start = self.file.index(first.span.start);
        let qpos = pos(first.span.start);
        let mut tvfs = Vec::new();
        let mut temporal = Vec::new();
        while self.at < self.tokens.len() {
            if self.is_keyword("FOR")
                && self.is_keyword_at(1, "SYSTEM_TIME")
                && self.at > 0
                && matches!(self.tokens[self.at - 1].token, Token::Word(_))
            {
                temporal.push(self.temporal_clause()?);
                continue;
            }
            if self.is_keyword("TABLE") && self.peek_at(1) == Some(&Token::LParen) {
                let is_window = ["TUMBLE", "HOP", "CUMULATE", "SESSION"]
                    .iter()
                    .any(|w| self.is_keyword_at(2, w));
                if is_window {
                    tvfs.push(self.window_tvf()?);
                    continue;
                }
            }
            self.at += 1;
        }
        Ok(QuerySpan {
            range: start..self.end_index,
            pos: qpos,
            tvfs,
            temporal,
        })
    }

    /// `FOR SYSTEM_TIME AS OF t.ts` after a table name.
    fn temporal_clause(&mut self) -> LResult<TemporalClause> {
        let prev = &self.tokens[self.at - 1];
        let table = match &prev.token {
            Token::Word(w) => Spanned {
                value: w.value.clone(),
                pos: pos(prev.span.start),
            },
            _ => unreachable!("checked by the caller"),
        };
        let start = self.file.index(self.tokens[self.at].span.start);
        self.at += 2; // FOR SYSTEM_TIME
        self.expect_keyword("AS")?;
        self.expect_keyword("OF")?;
        let mut time =
            self.ident("the stream's event-time column, as in FOR SYSTEM_TIME AS OF t.ts")?;
        while self.eat(&Token::Period) {
            let pos_before = time.pos;
            time = self.ident("a column name")?;
            time.pos = pos_before;
        }
        let end = self.file.index(self.tokens[self.at - 1].span.end);
        Ok(TemporalClause {
            range: start..end,
            table,
            time,
        })
    }

    fn window_tvf(&mut self) -> LResult<WindowTvf> {
        let start_token = &self.tokens[self.at];
        let start = self.file.index(start_token.span.start);
        let tvf_pos = pos(start_token.span.start);
        self.at += 2; // TABLE (
        let func = self.ident("TUMBLE, HOP, CUMULATE or SESSION")?;
        let func_name = func.value.to_ascii_uppercase();
        self.expect(Token::LParen)?;
        self.expect_keyword("TABLE")?;
        let table = self.object_name("the source table name")?;
        let mut partition_by = Vec::new();
        if self.is_keyword("PARTITION") {
            if func_name != "SESSION" {
                return Err(Located::new(
                    self.here(),
                    format!(
                        "PARTITION BY is for SESSION windows; {func_name} windows are the same for every key"
                    ),
                ));
            }
            self.at += 1;
            self.expect_keyword("BY")?;
            loop {
                partition_by.push(self.ident("a column to partition sessions by")?);
                if !self.eat(&Token::Comma) || self.is_keyword("DESCRIPTOR") {
                    break;
                }
            }
        } else {
            self.expect(Token::Comma)?;
        }
        self.expect_keyword("DESCRIPTOR")?;
        self.expect(Token::LParen)?;
        let time_column = self.ident("the event-time column")?;
        self.expect(Token::RParen)?;
        let mut intervals = Vec::new();
        while self.eat(&Token::Comma) {
            intervals.push((self.here(), self.interval()?));
        }
        self.expect(Token::RParen)?;
        let end_token = &self.tokens[self.at.min(self.tokens.len() - 1)];
        self.expect(Token::RParen)?;
        let end = self.file.index(end_token.span.start) + 1;
        let positive = |(p, v): (Pos, i64)| {
            if v > 0 {
                Ok(v)
            } else {
                Err(Located::new(p, "a window interval must be positive"))
            }
        };
        let (kind, offset) = match (func_name.as_str(), intervals.as_slice()) {
            ("TUMBLE", [size]) => (
                WindowKind::Tumble {
                    size_ms: positive(*size)?,
                },
                0,
            ),
            ("TUMBLE", [size, offset]) => (
                WindowKind::Tumble {
                    size_ms: positive(*size)?,
                },
                offset.1,
            ),
            ("HOP", [slide, size]) | ("HOP", [slide, size, _]) => {
                let slide_ms = positive(*slide)?;
                let size_ms = positive(*size)?;
                if size_ms % slide_ms != 0 {
                    return Err(Located::new(
                        size.0,
                        "a HOP window's size must be a whole multiple of its slide",
                    ));
                }
                let offset = intervals.get(2).map(|o| o.1).unwrap_or(0);
                (WindowKind::Hop { slide_ms, size_ms }, offset)
            }
            ("CUMULATE", [step, size]) | ("CUMULATE", [step, size, _]) => {
                let step_ms = positive(*step)?;
                let size_ms = positive(*size)?;
                if size_ms % step_ms != 0 {
                    return Err(Located::new(
                        size.0,
                        "a CUMULATE window's max size must be a whole multiple of its step",
                    ));
                }
                let offset = intervals.get(2).map(|o| o.1).unwrap_or(0);
                (WindowKind::Cumulate { step_ms, size_ms }, offset)
            }
            ("CUMULATE", _) => {
                return Err(Located::new(
                    func.pos,
                    "CUMULATE takes (TABLE t, DESCRIPTOR(ts), step, max size [, offset])",
                ));
            }
            ("TUMBLE", _) => {
                return Err(Located::new(
                    func.pos,
                    "TUMBLE takes (TABLE t, DESCRIPTOR(ts), size [, offset])",
                ));
            }
            ("HOP", _) => {
                return Err(Located::new(
                    func.pos,
                    "HOP takes (TABLE t, DESCRIPTOR(ts), slide, size [, offset])",
                ));
            }
            ("SESSION", [gap]) => (
                WindowKind::Session {
                    gap_ms: positive(*gap)?,
                },
                0,
            ),
            ("SESSION", _) => {
                return Err(Located::new(
                    func.pos,
                    "SESSION takes (TABLE t [PARTITION BY k, ...], DESCRIPTOR(ts), gap), e.g. SESSION(TABLE tx PARTITION BY card_id, DESCRIPTOR(ts), INTERVAL '30' SECOND)",
                ));
            }
            (other, _) => {
                return Err(Located::new(
                    func.pos,
                    format!("unknown window {other}: use TUMBLE, HOP, CUMULATE or SESSION"),
                ));
            }
        };
        Ok(WindowTvf {
            range: start..end,
            pos: tvf_pos,
            table,
            partition_by,
            time_column,
            kind,
            offset_ms: offset,
        })
    }
}
