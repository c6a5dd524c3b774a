//! Shell-style globs for policy files: `*`, `?`, `[a-z]`, `[!0-9]` and `\` to quote.
//! Case-sensitive, matched against the whole text (type ids and names, parent names, drivers).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(char),
    /// `?`: exactly one character.
    One,
    /// `*`: any run of characters, also none.
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled glob. Its `Display` is the pattern as written.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    tokens: Vec<Token>,
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl Glob {
    /// Compiles `pattern`; the error says what is wrong, in a sentence fragment that fits
    /// after "bad glob ...: ".
    pub fn new(pattern: &str) -> Result<Glob, String> {
        if pattern.is_empty() {
            return Err("it is empty".into());
        }
        let mut tokens = Vec::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let token = match c {
                '*' => {
                    // "**" means the same as "*"; keep one so matching stays linear.
                    if tokens.last() == Some(&Token::Any) {
                        continue;
                    }
                    Token::Any
                }
                '?' => Token::One,
                '\\' => match chars.next() {
                    Some(quoted) => Token::Literal(quoted),
                    None => return Err("it ends with a lone '\\'".into()),
                },
                '[' => parse_class(&mut chars)?,
                ']' => return Err("it has ']' without '['; write \\] for a literal one".into()),
                other => Token::Literal(other),
            };
            tokens.push(token);
        }
        Ok(Glob {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether the pattern has no wildcard, so it matches exactly one text.
    pub fn is_literal(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether the whole of `text` matches.
    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        let (mut t, mut p) = (0usize, 0usize);
        // Where the last '*' was and how much text it has swallowed: backtracking to it alone
        // is enough because a later '*' can absorb anything an earlier one could.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match self.tokens.get(p) {
                Some(Token::Any) => {
                    star = Some((p, t));
                    p += 1;
                    continue;
                }
                Some(token) if token_matches(token, text[t]) => {
                    p += 1;
                    t += 1;
                    continue;
                }
                _ => {}
            }
            match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            }
        }
        self.tokens[p..].iter().all(|t| *t == Token::Any)
    }
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(l) => *l == c,
        Token::One => true,
        Token::Any => false,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c)) != *negated
        }
    }
}

/// Parses a class after its '['. A ']' right after '[' or '[!' is a member, as in the shell.
fn parse_class(chars: &mut std::str::Chars<'_>) -> Result<Token, String> {
    let unclosed = || "it has '[' without a closing ']'".to_string();
    let mut negated = false;
    let mut ranges = Vec::new();
    let mut first = true;
    let mut rest = chars.clone().peekable();
    if matches!(rest.peek(), Some('!') | Some('^')) {
        negated = true;
        chars.next();
    }
    loop {
        let c = chars.next().ok_or_else(unclosed)?;
        let lo = match c {
            ']' if !first => break,
            '\\' => chars.next().ok_or_else(unclosed)?,
            other => other,
        };
        first = false;
        let mut ahead = chars.clone();
        if ahead.next() == Some('-') {
            match ahead.next() {
                Some(']') | None => {}
                Some(hi) => {
                    let hi = if hi == '\\' {
                        ahead.next().ok_or_else(unclosed)?
                    } else {
                        hi
                    };
                    if hi < lo {
                        return Err(format!("its range {lo}-{hi} runs backwards"));
                    }
                    *chars = ahead;
                    ranges.push((lo, hi));
                    continue;
                }
            }
        }
        ranges.push((lo, lo));
    }
    Ok(Token::Class { negated, ranges })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Glob::new(p).unwrap().matches(t)
    }

    #[test]
    fn literal_matches_only_itself() {
        assert!(m("GRID T4-2Q", "GRID T4-2Q"));
        assert!(!m("GRID T4-2Q", "GRID T4-2Q "));
        assert!(!m("GRID T4-2Q", "grid t4-2q"));
        assert!(Glob::new("nvidia-231").unwrap().is_literal());
    }

    #[test]
    fn star_matches_any_run() {
        assert!(m("GRID T4-*Q", "GRID T4-16Q"));
        assert!(m("GRID T4-*Q", "GRID T4-Q"));
        assert!(!m("GRID T4-*Q", "GRID T4-2B"));
        assert!(m("*", ""));
        assert!(m("0000:3b:*", "0000:3b:00.0"));
        assert!(m("*a*b*", "xxaxxbxx"));
        assert!(!m("*a*b", "xxaxxbxxc"));
        assert!(m("a**b", "ab"));
    }

    #[test]
    fn question_mark_matches_one_char() {
        assert!(m("nvidia-23?", "nvidia-231"));
        assert!(!m("nvidia-23?", "nvidia-23"));
        assert!(!m("nvidia-23?", "nvidia-2310"));
        assert!(m("?", "é"));
    }

    #[test]
    fn classes_and_ranges() {
        assert!(m("nvidia-2[3-4]1", "nvidia-241"));
        assert!(!m("nvidia-2[3-4]1", "nvidia-251"));
        assert!(m("x[!0-9]", "xa"));
        assert!(!m("x[!0-9]", "x5"));
        assert!(m("x[]]", "x]"));
        assert!(m("x[a-]", "x-"));
        assert!(!Glob::new("x[a-]").unwrap().is_literal());
    }

    #[test]
    fn backslash_quotes() {
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(m(r"\[x\]", "[x]"));
    }

    #[test]
    fn bad_patterns_say_why() {
        assert_eq!(Glob::new("").unwrap_err(), "it is empty");
        assert!(Glob::new("a[bc").unwrap_err().contains("without a closing"));
        assert!(Glob::new("a]").unwrap_err().contains("without '['"));
        assert!(Glob::new("a\\").unwrap_err().contains("lone"));
        assert!(Glob::new("[z-a]").unwrap_err().contains("backwards"));
        assert!(Glob::new("[").is_err());
        assert!(Glob::new("[!").is_err());
    }

    #[test]
    fn display_is_the_pattern() {
        assert_eq!(Glob::new("GRID *").unwrap().to_string(), "GRID *");
    }
}
