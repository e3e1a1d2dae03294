//! What the model is asked: the conversation within a budget, and a title.

use confab_domain::{Message, MessageRole, ModelSlug, Title};
use confab_ports::{CompletionRequest, PromptRole, PromptTurn};

/// The instruction of the title call. Test doubles recognise a title call
/// by the phrase "a title for this conversation".
const TITLE_PROMPT: &str = "Write a title for this conversation: at most six words that name \
its subject, in the language of the message. Reply with the title only, without quotes or \
punctuation at the end.";

/// Longest title kept, in characters.
const TITLE_CHARS: usize = 60;

/// The prompt for answering `history`'s last message (a question, or an
/// answer to go on with): the system prompt, then as many of the latest
/// turns as fit in `budget` characters (the newest always goes whole).
/// Messages without text are left out.
pub(super) fn build_prompt(
    history: &[Message],
    system_prompt: &str,
    budget: usize,
) -> Vec<PromptTurn> {
    let mut picked = Vec::new();
    let mut used = 0_usize;
    for message in history.iter().rev() {
        let role = match message.role {
            MessageRole::User => PromptRole::User,
            MessageRole::Assistant => PromptRole::Assistant,
            MessageRole::System => PromptRole::System,
            MessageRole::Tool => continue,
        };
        let text = message.content.joined();
        if text.trim().is_empty() {
            continue;
        }
        let size = text.chars().count();
        if !picked.is_empty() && used + size > budget {
            break;
        }
        used += size;
        picked.push(PromptTurn { role, text });
    }
    let mut turns = Vec::with_capacity(picked.len() + 1);
    if !system_prompt.trim().is_empty() {
        turns.push(PromptTurn {
            role: PromptRole::System,
            text: system_prompt.to_owned(),
        });
    }
    turns.extend(picked.into_iter().rev());
    turns
}

/// The most characters of the first message the title call sees.
const TITLE_INPUT_CHARS: usize = 2000;

/// The most tokens the title call may answer with.
const TITLE_MAX_TOKENS: u32 = 24;

/// The title call's sampling temperature: low, for a plain title.
const TITLE_TEMPERATURE: f32 = 0.2;

/// The most bytes of a title answer read before it is cut (a model that
/// ignores the token cap can't make the title call read forever).
pub(super) const TITLE_ANSWER_BYTES: usize = 400;

/// The short call that names a new conversation after its first message.
pub(super) fn title_request(model: &ModelSlug, first_message: &str) -> CompletionRequest {
    CompletionRequest {
        model: model.clone(),
        turns: vec![
            PromptTurn {
                role: PromptRole::System,
                text: TITLE_PROMPT.to_owned(),
            },
            PromptTurn {
                role: PromptRole::User,
                text: first_message.chars().take(TITLE_INPUT_CHARS).collect(),
            },
        ],
        temperature: Some(TITLE_TEMPERATURE),
        max_tokens: TITLE_MAX_TOKENS,
    }
}

/// Collapses white space and cuts at a word boundary within `TITLE_CHARS`.
fn shorten(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let mut out = String::new();
    for word in words {
        let extra = usize::from(!out.is_empty()) + word.chars().count();
        if out.chars().count() + extra > TITLE_CHARS {
            if out.is_empty() {
                out = word.chars().take(TITLE_CHARS).collect();
            }
            break;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// The model's answer as a title: its first line, without quotes, a
/// "Title:" prefix or a final full stop; `None` when nothing usable is left.
pub(super) fn clean_title(answer: &str) -> Option<Title> {
    let line = answer.lines().find(|l| !l.trim().is_empty())?.trim();
    let line = line
        .strip_prefix("Title:")
        .or_else(|| line.strip_prefix("title:"))
        .unwrap_or(line);
    let line = line
        .trim()
        .trim_matches(|c: char| c == '"' || c == '\'' || c == '*' || c == '#' || c == '`')
        .trim_end_matches('.')
        .trim();
    let cleaned: String = line.chars().filter(|c| !c.is_control()).collect();
    Title::parse(&shorten(&cleaned)).ok()
}

/// A title made from the first message: its first words.
pub(super) fn heuristic_title(first_message: &str) -> Title {
    let line = first_message
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let cleaned: String = line.chars().filter(|c| !c.is_control()).collect();
    Title::parse(&shorten(&cleaned)).unwrap_or_else(|_| Title::placeholder())
}

#[cfg(test)]
mod tests {
    use confab_domain::{
        Content, ConversationId, MessageId, MessageMetadata, MessageStatus, OffsetDateTime,
    };

    use super::*;

    fn message(id: &str, role: MessageRole, text: &str) -> Message {
        Message {
            id: MessageId::parse(id).unwrap(),
            conversation_id: ConversationId::generate(),
            parent_id: None,
            role,
            content: Content::text(vec![text.to_owned()]).unwrap(),
            status: MessageStatus::FinishedSuccessfully,
            model_slug: None,
            metadata: MessageMetadata::new(),
            created_at: OffsetDateTime::now_utc(),
            updated_at: OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn prompt_keeps_the_newest_turns_within_budget() {
        let mut answering = message("a3", MessageRole::Assistant, "");
        answering.status = MessageStatus::InProgress;
        let history = vec![
            message("u1", MessageRole::User, &"old ".repeat(50)),
            message("a1", MessageRole::Assistant, "reply one"),
            message("u2", MessageRole::User, "second question"),
            answering,
        ];
        let turns = build_prompt(&history, "Be brief.", 30);
        let texts: Vec<&str> = turns.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["Be brief.", "reply one", "second question"]);
        assert_eq!(turns[0].role, PromptRole::System);
        assert_eq!(turns[2].role, PromptRole::User);
    }

    #[test]
    fn the_newest_message_goes_even_over_budget() {
        let history = vec![message("u1", MessageRole::User, &"x".repeat(100))];
        let turns = build_prompt(&history, "", 10);
        assert_eq!(turns.len(), 1);
        assert_eq!(turns[0].text.len(), 100);
    }

    #[test]
    fn titles_are_cleaned_and_bounded() {
        assert_eq!(
            clean_title("\"Redis Caching Explained.\"\n")
                .unwrap()
                .as_str(),
            "Redis Caching Explained"
        );
        assert_eq!(
            clean_title("Title: Python decorators").unwrap().as_str(),
            "Python decorators"
        );
        assert!(clean_title("  \n ").is_none());
        let long = heuristic_title(&"word ".repeat(40));
        assert!(long.as_str().chars().count() <= TITLE_CHARS);
        assert_eq!(
            heuristic_title("Hello! Can you explain Redis caching?\nThanks").as_str(),
            "Hello! Can you explain Redis caching?"
        );
        assert_eq!(heuristic_title("\u{1b}\u{7}").as_str(), "New chat");
        assert!(TITLE_PROMPT.contains("a title for this conversation"));
    }
}
