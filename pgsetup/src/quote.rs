//! SQL quoting: identifiers, literals, and the schema-qualified table names users type.
//!
//! Identifiers are always double-quoted (never "quoted when needed"), so the SQL this tool
//! prints and runs reads the same for `replink` and `"My Table"` and no keyword list is needed.
//! Literals are written so they mean the same whatever `standard_conforming_strings` is.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// `"name"` with every `"` doubled: PostgreSQL's `quote_ident`, always quoting.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A string literal safe under either `standard_conforming_strings` setting: `'…'` with `'`
/// doubled, or, when the text holds a backslash, `E'…'` with backslashes doubled too (what
/// PostgreSQL's `quote_literal` does).
pub fn quote_literal(text: &str) -> String {
    let body = text.replace('\'', "''");
    if text.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// A name as given on the command line for a publication, subscription or role: taken as
/// written (no case folding, no quote parsing), so `--publication MyPub` names `"MyPub"`.
pub fn object_name(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("a name cannot be empty".into());
    }
    if text.contains('\0') {
        return Err("a name cannot hold a NUL character".into());
    }
    if text.len() > 63 {
        return Err(format!(
            "{text:?} is {} bytes long; PostgreSQL names hold at most 63",
            text.len()
        ));
    }
    Ok(text.to_owned())
}

/// A table (or sequence) name with an optional schema, parsed with SQL's identifier rules:
/// `public.auth_session`, `auth_session`, `"My Schema"."Weird ""Table"""`. Unquoted parts
/// fold to lower case as PostgreSQL folds them; quoted parts are taken as written with `""`
/// standing for `"`. A name without a schema is found on the server's `search_path`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct QualifiedName {
    pub schema: Option<String>,
    pub name: String,
}

impl QualifiedName {
    pub fn new(schema: &str, name: &str) -> QualifiedName {
        QualifiedName {
            schema: Some(schema.to_owned()),
            name: name.to_owned(),
        }
    }

    /// `"schema"."name"`, or `"name"` without a schema.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{}.{}", quote_ident(schema), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }
}

/// How a table is shown in messages: `schema.name`, each part quoted only when it would not
/// read back as the same name (the form psql's `\d` accepts).
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn part(s: &str) -> String {
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if plain {
                s.to_owned()
            } else {
                quote_ident(s)
            }
        }
        match &self.schema {
            Some(schema) => write!(f, "{}.{}", part(schema), part(&self.name)),
            None => f.write_str(&part(&self.name)),
        }
    }
}

impl FromStr for QualifiedName {
    type Err = Error;

    fn from_str(text: &str) -> Result<QualifiedName, Error> {
        let bad = |why: &str| Error::Name(format!("table name {text:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = text.trim();
        loop {
            let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
                let mut part = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) => {
                            if quoted[i + 1..].starts_with('"') {
                                part.push('"');
                                chars.next();
                            } else {
                                break i + 1;
                            }
                        }
                        Some((_, c)) => part.push(c),
                        None => return Err(bad("a double quote is not closed")),
                    }
                };
                if part.is_empty() {
                    return Err(bad("\"\" is an empty name"));
                }
                (part, &quoted[end..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                let word = &rest[..end];
                let valid = word
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && word
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '$');
                if !valid {
                    return Err(bad(&format!(
                        "{word:?} needs double quotes to be a name (e.g. -t '\"My Schema\".\"My Table\"')"
                    )));
                }
                (word.to_ascii_lowercase(), &rest[end..])
            };
            if part.contains('\0') {
                return Err(bad("a name cannot hold a NUL character"));
            }
            parts.push(part);
            match after.strip_prefix('.') {
                Some(next) => rest = next,
                None if after.is_empty() => break,
                None => return Err(bad(&format!("unexpected {after:?} after a name"))),
            }
        }
        let mut parts = parts.into_iter();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(name), None, _) => Ok(QualifiedName { schema: None, name }),
            (Some(schema), Some(name), None) => Ok(QualifiedName {
                schema: Some(schema),
                name,
            }),
            _ => Err(bad(
                "give SCHEMA.TABLE or TABLE (a database name cannot be part of it)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &str) -> QualifiedName {
        text.parse().unwrap()
    }

    #[test]
    fn identifiers_are_always_quoted_with_quotes_doubled() {
        assert_eq!(quote_ident("replink"), "\"replink\"");
        assert_eq!(quote_ident("My Pub"), "\"My Pub\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_ident("\"\""), "\"\"\"\"\"\"");
    }

    #[test]
    fn literals_survive_either_standard_conforming_strings() {
        assert_eq!(quote_literal("plain"), "'plain'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"C:\dir"), r"E'C:\\dir'");
        assert_eq!(quote_literal(r"a\'b"), r"E'a\\''b'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn qualified_names_follow_sql_identifier_rules() {
        assert_eq!(
            q("auth_session"),
            QualifiedName {
                schema: None,
                name: "auth_session".into()
            }
        );
        assert_eq!(
            q("public.auth_session"),
            QualifiedName::new("public", "auth_session")
        );
        assert_eq!(
            q("Public.Auth_Session"),
            QualifiedName::new("public", "auth_session")
        );
        assert_eq!(
            q(r#""My Schema"."Weird ""Table""""#),
            QualifiedName::new("My Schema", "Weird \"Table\"")
        );
        assert_eq!(q(r#""a.b".c"#), QualifiedName::new("a.b", "c"));
        assert_eq!(q("  s.\"T\"  "), QualifiedName::new("s", "T"));
        assert_eq!(q("été.données"), QualifiedName::new("été", "données"));
    }

    #[test]
    fn bad_table_names_say_what_is_wrong() {
        for (text, why) in [
            ("", "needs double quotes"),
            ("a.b.c", "database name"),
            ("\"open", "not closed"),
            ("\"\"", "empty name"),
            ("my table", "needs double quotes"),
            ("a.", "needs double quotes"),
            ("\"a\"x", "unexpected"),
            ("1abc", "needs double quotes"),
        ] {
            let err = text.parse::<QualifiedName>().unwrap_err().to_string();
            assert!(err.contains(why), "{text:?}: {err}");
        }
    }

    #[test]
    fn quoted_and_display_forms() {
        let weird = QualifiedName::new("My Schema", "Weird \"Table\"");
        assert_eq!(weird.quoted(), r#""My Schema"."Weird ""Table""""#);
        assert_eq!(weird.to_string(), r#""My Schema"."Weird ""Table""""#);
        assert_eq!(q("public.t1").to_string(), "public.t1");
        assert_eq!(q("public.t1").quoted(), "\"public\".\"t1\"");
        assert_eq!(q("t").quoted(), "\"t\"");
        // What Display prints parses back to the same name.
        assert_eq!(q(&weird.to_string()), weird);
    }

    #[test]
    fn object_names_are_taken_as_written() {
        assert_eq!(object_name("MyPub").unwrap(), "MyPub");
        assert!(object_name("").is_err());
        assert!(object_name(&"x".repeat(64)).is_err());
    }
}
