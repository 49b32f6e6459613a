//! YAML from files hone did not write (recipes, lockfiles, `--set` values) is checked before
//! it is parsed: the parser's time grows with the square of flow nesting (`[[[[...]]]]`, a
//! 160 KB recipe took 32 s), and it refuses more than 128 levels anyway, so the nesting is
//! measured first, in one pass.

/// How deeply YAML hone reads may nest flow collections (`[...]`, `{...}`): serde_yaml's own
/// limit.
pub const MAX_NESTING: usize = 128;

/// Where `text` first opens a flow collection (`[` or `{`) deeper than `limit` levels, as a
/// 1-based line and column; `None` if it never does. One pass, skipping quoted strings and
/// comments; brackets inside plain or block scalars count too, which can only make a recipe
/// with a scalar of over `limit` unclosed brackets look deeper than it is.
pub fn too_deep(text: &str, limit: usize) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut col) = (0usize, 1usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut comment = false;
    let mut prev = '\n';
    for c in text.chars() {
        col += 1;
        if c == '\n' {
            (line, col, comment) = (line + 1, 0, false);
            prev = c;
            continue;
        }
        if comment {
            continue;
        }
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '#' if prev.is_whitespace() => comment = true,
                '"' | '\'' if !prev.is_alphanumeric() => quote = Some(c),
                '[' | '{' => {
                    depth += 1;
                    if depth > limit {
                        return Some((line, col));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        prev = c;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::too_deep;

    #[test]
    fn nesting_is_found_where_it_passes_the_limit() {
        assert_eq!(too_deep("a: [[1]]\n", 2), None);
        assert_eq!(too_deep("a: [[[1]]]\n", 2), Some((1, 6)));
        assert_eq!(
            too_deep("a: {b: [{c: 1}]}\nd: [[[[x]]]]\n", 3),
            Some((2, 7))
        );
        // Closed collections do not add up.
        assert_eq!(too_deep("a: [[1], [2], [3]]\n", 2), None);
    }

    #[test]
    fn quoted_text_and_comments_are_not_nesting() {
        assert_eq!(too_deep("a: '[[[['\nb: \"{{{{\\\"[[\"\n# [[[[\n", 2), None);
        assert_eq!(too_deep("a: it's [[[x]]]\n", 2), Some((1, 11)));
        assert_eq!(too_deep("a: x # [[[[\n", 2), None);
    }
}
