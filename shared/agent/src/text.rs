//! Small text helpers the device clients of both sentries share.

/// An error and its whole source chain, `outer: inner: …`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Checks a device name from a config: 1..=64 of `A-Za-z0-9._-`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("`name` must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "`name` `{name}` may only hold letters, digits, `.`, `_` and `-`"
        ));
    }
    Ok(())
}

/// `s` cut to at most `max` bytes (on a char boundary), with `…` (counted
/// in `max`) when cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_names_and_chains() {
        assert_eq!(clip("abc", 3), "abc");
        let c = clip(&"é".repeat(100), 11);
        assert!(c.len() <= 11 && c.ends_with('…'), "{c}");
        assert!(check_name("rig-01.a_b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").unwrap_err().contains("may only hold"));
        let io = std::io::Error::other("inner");
        assert_eq!(error_chain(&io), "inner");
    }
}
