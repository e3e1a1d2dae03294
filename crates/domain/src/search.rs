//! Search of a user's conversations: the query as the user typed it, the
//! terms a store looks for, and the snippet a hit shows.
//!
//! A query is text, never syntax: it is split at whitespace into terms,
//! each lowercased; a store matches every term as the start of a word (so
//! `postg` finds "PostgreSQL") and quotes each one in its own query
//! language, so `*`, `"`, `OR`, `:` or `&` typed by a user are only
//! characters. Highlights are found here, by one rule for every store, so
//! both databases show the same snippet for the same text.

use crate::text::check_text;
use crate::{DomainError, Field, MessageId};

/// A search of a user's conversations: 1..=100 characters with at least
/// one that is not whitespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchQuery {
    text: String,
    terms: Vec<String>,
}

impl SearchQuery {
    /// Longest search, in characters.
    pub const MAX_CHARS: usize = 100;
    /// Most terms looked for; later ones are ignored.
    pub const MAX_TERMS: usize = 16;

    /// Validates a search string.
    ///
    /// # Errors
    /// [`DomainError::Invalid`] on `q` when it is empty, blank, too long or
    /// holds a NUL byte.
    pub fn parse(value: &str) -> Result<Self, DomainError> {
        check_text(Field::Query, value, 1, Self::MAX_CHARS)?;
        let mut terms: Vec<String> = Vec::new();
        for term in value.split_whitespace().map(str::to_lowercase) {
            if !terms.contains(&term) && terms.len() < Self::MAX_TERMS {
                terms.push(term);
            }
        }
        if terms.is_empty() {
            return Err(DomainError::invalid(
                Field::Query,
                "must contain something other than whitespace",
            ));
        }
        Ok(Self {
            text: value.to_owned(),
            terms,
        })
    }

    /// The text as the user typed it.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The whitespace-separated terms, lowercased, without repeats: a
    /// title matches when it contains every one of them.
    #[must_use]
    pub fn terms(&self) -> &[String] {
        &self.terms
    }

    /// The terms a full-text index can look for: those with a letter or a
    /// digit (punctuation alone is not indexed). A message matches when
    /// each of them starts a word of it (a term of several words, such as
    /// `e-mail`, as a phrase).
    pub fn word_terms(&self) -> impl Iterator<Item = &str> {
        self.terms
            .iter()
            .map(String::as_str)
            .filter(|t| t.chars().any(char::is_alphanumeric))
    }

    /// Whether every word of every term starts a word of `text`: the rule
    /// the databases' full-text indexes apply, for a store without one.
    #[must_use]
    pub fn matches(&self, text: &str) -> bool {
        let chars: Vec<char> = text.chars().collect();
        let lowered = Lowered::of(&chars);
        let mut words = self.words().peekable();
        words.peek().is_some() && words.all(|w| lowered.word_starts().any(|at| lowered.has(at, w)))
    }

    /// A short, plain-text extract of `text` around its first match, with
    /// where the matches are in it.
    #[must_use]
    pub fn snippet(&self, text: &str) -> Snippet {
        let flat: Vec<char> = flatten(text);
        let highlights = self.highlights(&flat);
        let len = flat.len();
        let (start, end) = if len <= Snippet::MAX_CHARS {
            (0, len)
        } else {
            window(&flat, highlights.first().copied())
        };
        let lead = usize::from(start > 0);
        let mut out: String = String::with_capacity(Snippet::MAX_CHARS + 8);
        if start > 0 {
            out.push('…');
        }
        out.extend(&flat[start..end]);
        if end < len {
            out.push('…');
        }
        Snippet {
            text: out,
            // Those in the window, a cut one clipped to it.
            highlights: highlights
                .into_iter()
                .filter(|&(s, e)| s < end && e > start)
                .map(|(s, e)| (s.max(start) - start + lead, e.min(end) - start + lead))
                .collect(),
        }
    }

    /// The runs of letters and digits of every term, lowercased.
    fn words(&self) -> impl Iterator<Item = &str> {
        self.terms
            .iter()
            .flat_map(|t| t.split(|c: char| !c.is_alphanumeric()))
            .filter(|w| !w.is_empty())
    }

    /// The words of `chars` that start with one of the query's words: the
    /// start and the end (exclusive) of each, in order.
    fn highlights(&self, chars: &[char]) -> Vec<(usize, usize)> {
        let lowered = Lowered::of(chars);
        let words: Vec<&str> = self.words().collect();
        let mut found = Vec::new();
        let mut after = 0;
        for at in lowered.word_starts() {
            if at < after {
                continue;
            }
            if words.iter().any(|w| lowered.has(at, w)) {
                // The whole word is marked, not only the part typed.
                let end = chars[at..]
                    .iter()
                    .position(|c| !c.is_alphanumeric())
                    .map_or(chars.len(), |n| at + n);
                found.push((at, end));
                after = end;
            }
        }
        found
    }
}

/// Text with its whitespace runs made single spaces, as characters.
fn flatten(text: &str) -> Vec<char> {
    let mut out = Vec::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars());
    }
    out
}

/// The part of `chars` a snippet shows: from a little before the first
/// match (at a word's start), [`Snippet::MAX_CHARS`] long (ending at a
/// word's end where one is near).
fn window(chars: &[char], first: Option<(usize, usize)>) -> (usize, usize) {
    let (anchor, anchor_end) = first.unwrap_or((0, 0));
    let mut start = anchor.saturating_sub(Snippet::CONTEXT_CHARS);
    if start > 0
        && let Some(space) = chars[start..anchor].iter().position(|c| *c == ' ')
    {
        start += space + 1;
    }
    let mut end = (start + Snippet::MAX_CHARS).min(chars.len());
    // Back to the end of a word after the first match, when one ends in
    // the window; a match longer than the window is cut with it.
    let after = anchor_end.clamp(start, end);
    if end < chars.len()
        && let Some(space) = chars[after..end].iter().rposition(|c| *c == ' ')
    {
        end = after + space;
    }
    (start, end)
}

/// Text lowercased character by character, knowing where each original
/// character's lowered form starts (lowercasing may lengthen a character).
struct Lowered<'a> {
    original: &'a [char],
    /// The lowered characters.
    chars: Vec<char>,
    /// Where each original character's lowered form begins in `chars`.
    starts: Vec<usize>,
}

impl<'a> Lowered<'a> {
    fn of(original: &'a [char]) -> Self {
        let mut chars = Vec::with_capacity(original.len());
        let mut starts = Vec::with_capacity(original.len());
        for c in original {
            starts.push(chars.len());
            chars.extend(c.to_lowercase());
        }
        Self {
            original,
            chars,
            starts,
        }
    }

    /// The original indexes where a word (a run of letters and digits)
    /// starts.
    fn word_starts(&self) -> impl Iterator<Item = usize> + '_ {
        self.original.iter().enumerate().filter_map(|(i, c)| {
            let starts = c.is_alphanumeric() && (i == 0 || !self.original[i - 1].is_alphanumeric());
            starts.then_some(i)
        })
    }

    /// Whether the word at original index `at` starts with `word`.
    fn has(&self, at: usize, word: &str) -> bool {
        let Some(&from) = self.starts.get(at) else {
            return false;
        };
        let mut lowered = self.chars[from..].iter().copied();
        word.chars().all(|w| lowered.next() == Some(w))
    }
}

/// A short extract of a matched text: plain text, never markup, and the
/// matches in it as `[start, end)` ranges counted in characters (Unicode
/// scalar values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snippet {
    text: String,
    highlights: Vec<(usize, usize)>,
}

impl Snippet {
    /// Longest extract of a longer text, in characters (an ellipsis may be
    /// added at either end).
    pub const MAX_CHARS: usize = 160;
    /// Characters kept before the first match, about.
    pub const CONTEXT_CHARS: usize = 40;

    /// A snippet read back from storage.
    ///
    /// # Errors
    /// [`DomainError::Internal`] when a range is empty, out of order,
    /// overlaps the one before it or falls outside the text.
    pub fn new(text: String, highlights: Vec<(usize, usize)>) -> Result<Self, DomainError> {
        let len = text.chars().count();
        let mut after = 0;
        for &(start, end) in &highlights {
            if start < after || end <= start || end > len {
                return Err(DomainError::internal("a snippet's highlight is malformed"));
            }
            after = end;
        }
        Ok(Self { text, highlights })
    }

    /// The extract.
    #[must_use]
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The matches in it, in order.
    #[must_use]
    pub fn highlights(&self) -> &[(usize, usize)] {
        &self.highlights
    }
}

/// Why a conversation is in a search's results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchHit {
    /// The message that matched best, or `None` when only the title did
    /// (the snippet is then the title's).
    pub message_id: Option<MessageId>,
    /// Where the match is.
    pub snippet: Snippet,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the text and the query, a snippet is made without a
        /// panic, is short, and its highlights are in order, non-empty and
        /// inside it.
        #[test]
        fn any_text_gets_a_short_snippet_with_valid_highlights(
            text in "([a-zé İ🚀\\n.-]{0,12}|needle|x{150,400}){0,40}",
            query in "[a-zé İ-]{0,8}(needle)?",
        ) {
            let Ok(query) = SearchQuery::parse(&format!("{query} needle")) else {
                return Ok(());
            };
            let snippet = query.snippet(&text);
            let len = snippet.text().chars().count();
            prop_assert!(len <= Snippet::MAX_CHARS + 2, "{len}");
            prop_assert!(
                Snippet::new(snippet.text().to_owned(), snippet.highlights().to_vec()).is_ok()
            );
        }
    }

    fn q(text: &str) -> SearchQuery {
        SearchQuery::parse(text).unwrap()
    }

    /// The highlighted parts of a snippet, as text.
    fn marked(snippet: &Snippet) -> Vec<String> {
        let chars: Vec<char> = snippet.text().chars().collect();
        snippet
            .highlights()
            .iter()
            .map(|&(s, e)| chars[s..e].iter().collect())
            .collect()
    }

    #[test]
    fn a_query_is_bounded_and_not_blank() {
        assert!(SearchQuery::parse("").is_err());
        assert!(SearchQuery::parse("   \t").is_err());
        assert!(SearchQuery::parse("50%_off").is_ok());
        assert!(SearchQuery::parse(&"q".repeat(101)).is_err());
        assert!(SearchQuery::parse("a\0b").is_err());
    }

    #[test]
    fn terms_are_lowercased_unique_and_bounded() {
        let query = q("  Rust rust  ASYNC  e-mail ** ");
        assert_eq!(query.terms(), ["rust", "async", "e-mail", "**"]);
        assert_eq!(
            query.word_terms().collect::<Vec<_>>(),
            ["rust", "async", "e-mail"]
        );
        let many: String = (0..30).map(|n| format!("{n} ")).collect();
        assert_eq!(q(&many).terms().len(), SearchQuery::MAX_TERMS);
    }

    #[test]
    fn words_match_at_their_start_whatever_the_case() {
        let text = "Tuning PostgreSQL: the e-mail queue";
        assert!(q("postg").matches(text));
        assert!(q("TUNING queue").matches(text));
        assert!(q("e-mail").matches(text));
        assert!(!q("sql").matches(text), "inside a word is no match");
        assert!(!q("tuning redis").matches(text), "every term must match");
        assert!(!q("**").matches(text), "punctuation alone matches nothing");
    }

    #[test]
    fn a_short_text_is_its_own_snippet_with_every_match_marked() {
        let snippet = q("rust").snippet("Rust is fast;\n\n  rusty nails are not");
        assert_eq!(snippet.text(), "Rust is fast; rusty nails are not");
        assert_eq!(snippet.highlights(), [(0, 4), (14, 19)]);
        assert_eq!(
            marked(&snippet),
            ["Rust", "rusty"],
            "whole words are marked"
        );
    }

    #[test]
    fn a_long_text_is_cut_around_its_first_match() {
        let before = "lorem ipsum ".repeat(30);
        let after = " dolor sit amet".repeat(30);
        let text = format!("{before}the Needle here{after}");
        let snippet = q("needle").snippet(&text);
        assert!(snippet.text().starts_with('…'), "{}", snippet.text());
        assert!(snippet.text().ends_with('…'), "{}", snippet.text());
        assert!(snippet.text().chars().count() <= Snippet::MAX_CHARS + 2);
        assert_eq!(marked(&snippet), ["Needle"]);
        // Cut at word boundaries: the extract's words are whole.
        let inner = snippet.text().trim_matches('…');
        assert!(
            inner.starts_with("lorem") || inner.starts_with("ipsum"),
            "{inner}"
        );
    }

    #[test]
    fn a_match_longer_than_the_window_is_cut_with_it() {
        let long = format!("needle{}", "x".repeat(5_000));
        for text in [
            long.clone(),
            format!("{long} and more after it"),
            format!("some words before {long} and after"),
            format!("needle{} tail", "x".repeat(170)),
        ] {
            let snippet = q("needle").snippet(&text);
            let chars: Vec<char> = snippet.text().chars().collect();
            assert!(chars.len() <= Snippet::MAX_CHARS + 2, "{}", chars.len());
            assert_eq!(snippet.highlights().len(), 1, "{text:.30}");
            let (s, e) = snippet.highlights()[0];
            assert!(s < e && e <= chars.len());
            assert!(chars[s..e].iter().collect::<String>().starts_with("needle"));
            assert!(Snippet::new(snippet.text().to_owned(), snippet.highlights().to_vec()).is_ok());
        }
    }

    #[test]
    fn a_long_text_without_a_visible_match_shows_its_start() {
        let text = "word ".repeat(100);
        let snippet = q("absent").snippet(&text);
        assert!(snippet.text().starts_with("word"));
        assert!(snippet.text().ends_with('…'));
        assert!(snippet.highlights().is_empty());
    }

    #[test]
    fn highlights_count_characters_and_survive_lengthening_lowercase() {
        // 'İ' lowercases to two characters; the ranges stay on the text's.
        let snippet = q("café rust").snippet("İİ — 🚀 Café au lait, İ rust");
        assert_eq!(marked(&snippet), ["Café", "rust"]);
    }

    #[test]
    fn markup_and_syntax_are_only_characters() {
        let snippet = q("<img").snippet("an <img src=x onerror=alert(1)> tag");
        assert_eq!(snippet.text(), "an <img src=x onerror=alert(1)> tag");
        assert_eq!(marked(&snippet), ["img"]);
    }

    #[test]
    fn a_stored_snippet_is_checked() {
        assert!(Snippet::new("abc".into(), vec![(0, 1), (2, 3)]).is_ok());
        assert!(Snippet::new("abc".into(), vec![(0, 4)]).is_err());
        assert!(Snippet::new("abc".into(), vec![(1, 1)]).is_err());
        assert!(Snippet::new("abc".into(), vec![(1, 2), (0, 1)]).is_err());
    }
}
