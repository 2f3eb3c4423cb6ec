//! The small matching languages of the rule file: `*`/`?` globs, `database.schema.table` object
//! patterns with Snowflake's identifier rules, and time windows.

use super::classify::ObjectRef;

/// A `*`/`?` glob over characters (`*` any run, `?` any one character).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: Vec<char>,
    fold_case: bool,
}

impl Glob {
    /// A glob that compares characters exactly.
    pub fn exact(p: &str) -> Glob {
        Glob {
            pattern: p.chars().collect(),
            fold_case: false,
        }
    }

    /// A glob that ignores ASCII and Unicode case (Snowflake account, user and role names).
    pub fn caseless(p: &str) -> Glob {
        Glob {
            pattern: p.to_uppercase().chars().collect(),
            fold_case: true,
        }
    }

    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        let text: Vec<char> = if self.fold_case {
            s.to_uppercase().chars().collect()
        } else {
            s.chars().collect()
        };
        glob_match(&self.pattern, &text)
    }

    /// Whether the glob is `*` alone (matches anything, even an unknown value).
    pub fn is_any(&self) -> bool {
        !self.pattern.is_empty() && self.pattern.iter().all(|c| *c == '*')
    }
}

/// Iterative glob matching with one backtrack point: linear in practice, never recursive.
fn glob_match(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A `database.schema.table` pattern: one to three dot-separated parts, each a glob. Unquoted
/// parts fold to upper case as Snowflake folds unquoted identifiers; `"quoted"` parts keep their
/// case. Fewer parts leave the leading ones open (`orders` is any database and schema).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPattern {
    database: Option<Glob>,
    schema: Option<Glob>,
    name: Glob,
}

impl ObjectPattern {
    /// Parses a pattern; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<ObjectPattern, String> {
        let mut parts: Vec<String> = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut was_quoted = false;
        let mut chars = s.trim().chars().peekable();
        let push = |parts: &mut Vec<String>, cur: &mut String, q: bool| -> Result<(), String> {
            if cur.is_empty() {
                return Err("an empty part (two dots in a row, or a dot at an end)".to_owned());
            }
            parts.push(if q {
                std::mem::take(cur)
            } else {
                std::mem::take(cur).to_uppercase()
            });
            Ok(())
        };
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' if quoted => quoted = false,
                '"' if cur.is_empty() => {
                    quoted = true;
                    was_quoted = true;
                }
                '"' => return Err("a quote in the middle of an unquoted part".to_owned()),
                '.' if !quoted => {
                    push(&mut parts, &mut cur, was_quoted)?;
                    was_quoted = false;
                }
                c if !quoted && c.is_whitespace() => {
                    return Err("a space outside quotes".to_owned());
                }
                c => cur.push(c),
            }
        }
        if quoted {
            return Err("an unterminated quoted part".to_owned());
        }
        push(&mut parts, &mut cur, was_quoted)?;
        if parts.len() > 3 {
            return Err("more than three parts (database.schema.table)".to_owned());
        }
        let name = Glob::exact(&parts.pop().unwrap_or_default());
        let schema = parts.pop().map(|p| Glob::exact(&p));
        let database = parts.pop().map(|p| Glob::exact(&p));
        Ok(ObjectPattern {
            database,
            schema,
            name,
        })
    }

    /// Whether `o` matches. A part of `o` the session did not know matches only `*`.
    pub fn matches(&self, o: &ObjectRef) -> bool {
        let part = |g: &Option<Glob>, v: &Option<String>| match (g, v) {
            (None, _) => true,
            (Some(g), Some(v)) => g.matches(v),
            (Some(g), None) => g.is_any(),
        };
        self.name.matches(&o.name)
            && part(&self.schema, &o.schema)
            && part(&self.database, &o.database)
    }
}

/// A weekly time window: days of the week and an hour range, at UTC or a fixed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit `d` set for weekday `d` (0 = Monday).
    days: u8,
    /// Start and end in minutes after midnight; the end is exclusive; `end <= start` wraps midnight.
    minutes: Option<(u16, u16)>,
    /// Offset from UTC in seconds.
    offset_s: i32,
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

impl TimeWindow {
    /// A window of `days` (`mon`..`sun`; empty is every day), `hours` (`HH:MM-HH:MM`) and `offset`
    /// (`UTC`, `Z` or `+HH:MM`/`-HH:MM`).
    pub fn new(days: &[String], hours: Option<&str>, offset: Option<&str>) -> Result<Self, String> {
        let mut mask = 0u8;
        for d in days {
            let lower = d.to_ascii_lowercase();
            let i = DAYS
                .iter()
                .position(|x| *x == lower)
                .or_else(|| FULL_DAYS.iter().position(|x| *x == lower))
                .ok_or_else(|| {
                    format!("unknown day {d:?} (use mon, tue, wed, thu, fri, sat, sun)")
                })?;
            mask |= 1 << i;
        }
        if days.is_empty() {
            mask = 0x7f;
        }
        let minutes = match hours {
            None => None,
            Some(h) => {
                let (a, b) = h
                    .split_once('-')
                    .ok_or_else(|| format!("hours {h:?} is not HH:MM-HH:MM"))?;
                Some((hhmm(a.trim())?, hhmm(b.trim())?))
            }
        };
        let offset_s = match offset.map(str::trim) {
            None | Some("UTC") | Some("utc") | Some("Z") => 0,
            Some(o) => {
                let (sign, rest) = match o.as_bytes().first() {
                    Some(b'+') => (1, &o[1..]),
                    Some(b'-') => (-1, &o[1..]),
                    _ => return Err(format!("offset {o:?} is not UTC or +HH:MM/-HH:MM")),
                };
                let m = i32::from(hhmm(rest)?);
                if m > 14 * 60 {
                    return Err(format!("offset {o:?} is beyond ±14:00"));
                }
                sign * m * 60
            }
        };
        Ok(TimeWindow {
            days: mask,
            minutes,
            offset_s,
        })
    }

    /// Whether the instant `unix_s` (seconds since the epoch, UTC) falls in the window.
    pub fn contains(&self, unix_s: i64) -> bool {
        let local = unix_s + i64::from(self.offset_s);
        let day_index = local.div_euclid(86_400);
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day_index + 3).rem_euclid(7) as u8;
        let minute = (local.rem_euclid(86_400) / 60) as u16;
        if self.days & (1 << weekday) == 0 {
            return false;
        }
        match self.minutes {
            None => true,
            Some((a, b)) if a < b => minute >= a && minute < b,
            Some((a, b)) => minute >= a || minute < b,
        }
    }
}

fn hhmm(s: &str) -> Result<u16, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?} is not HH:MM"))?;
    let h: u16 = h.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    let m: u16 = m.parse().map_err(|_| format!("{s:?} is not HH:MM"))?;
    if h > 24 || m > 59 || (h == 24 && m != 0) {
        return Err(format!("{s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Glob::exact("etl-*").matches("etl-nightly"));
        assert!(!Glob::exact("etl-*").matches("ETL-nightly"));
        assert!(Glob::caseless("sys*").matches("SYSADMIN"));
        assert!(Glob::exact("a?c*d").matches("abcxxd"));
        assert!(Glob::exact("*").matches(""));
        assert!(!Glob::exact("a*b").matches("acbx"));
        assert!(Glob::exact("*a*b*").matches("xaybz"));
    }

    #[test]
    fn object_patterns_follow_identifier_rules() {
        let o = |d: Option<&str>, s: Option<&str>, n: &str| ObjectRef {
            database: d.map(Into::into),
            schema: s.map(Into::into),
            name: n.into(),
        };
        let p = ObjectPattern::parse("prod.*.orders").unwrap();
        assert!(p.matches(&o(Some("PROD"), Some("X"), "ORDERS")));
        assert!(!p.matches(&o(Some("prod"), Some("X"), "ORDERS")));
        assert!(!p.matches(&o(None, Some("X"), "ORDERS")), "unknown db");
        let p = ObjectPattern::parse("\"Prod\".\"a.b\".t*").unwrap();
        assert!(p.matches(&o(Some("Prod"), Some("a.b"), "TX")));
        assert!(!p.matches(&o(Some("PROD"), Some("a.b"), "TX")));
        let p = ObjectPattern::parse("*.*.*").unwrap();
        assert!(p.matches(&o(None, None, "T")));
        assert!(ObjectPattern::parse("a..b").is_err());
        assert!(ObjectPattern::parse("a.b.c.d").is_err());
        assert!(ObjectPattern::parse("\"a").is_err());
        assert!(ObjectPattern::parse("a b").is_err());
    }

    #[test]
    fn time_windows() {
        // 2026-11-23 is a Monday; 06:10 UTC.
        let monday_0610 = 1_795_414_200;
        let w = TimeWindow::new(&["mon".into()], Some("06:00-07:00"), None).unwrap();
        assert!(w.contains(monday_0610));
        assert!(!w.contains(monday_0610 + 3600));
        assert!(!w.contains(monday_0610 + 86_400));
        let w = TimeWindow::new(&[], Some("08:00-09:00"), Some("+02:00")).unwrap();
        assert!(w.contains(monday_0610));
        let night = TimeWindow::new(&["sun".into()], Some("22:00-02:00"), Some("-01:00")).unwrap();
        // 06:10 UTC Monday is 05:10 Monday at -01:00: not in the window.
        assert!(!night.contains(monday_0610));
        // 00:30 UTC Monday is 23:30 Sunday at -01:00.
        assert!(night.contains(monday_0610 - 5 * 3600 - 40 * 60));
        assert!(TimeWindow::new(&["moon".into()], None, None).is_err());
        assert!(TimeWindow::new(&[], Some("9-17"), None).is_err());
        assert!(TimeWindow::new(&[], None, Some("02:00")).is_err());
    }
}
