//! The model's chat template (ChatML, as SmolLM2's `tokenizer.chat_template`
//! says) as text and as token ids, and fitting a long conversation into the
//! context.

use confab_ports::{PromptRole, PromptTurn};

use super::LocalError;
use super::tokenizer::GgufTokenizer;

/// The turns the model reads: the conversation, with the default system
/// prompt first when it doesn't start with a system turn (as SmolLM2's
/// template does; an empty default adds nothing).
fn with_system<'a>(turns: &'a [PromptTurn], default_system: &'a str) -> Vec<(PromptRole, &'a str)> {
    let mut all = Vec::with_capacity(turns.len() + 1);
    let starts_with_system = turns.first().is_some_and(|t| t.role == PromptRole::System);
    if !starts_with_system && !default_system.is_empty() {
        all.push((PromptRole::System, default_system));
    }
    all.extend(turns.iter().map(|t| (t.role, t.text.as_str())));
    all
}

/// The prompt as text: `<|im_start|>{role}\n{text}<|im_end|>\n` for each
/// turn, then `<|im_start|>assistant\n` for the answer.
pub(crate) fn render(turns: &[PromptTurn], default_system: &str) -> String {
    let mut text = String::new();
    for (role, said) in with_system(turns, default_system) {
        text.push_str("<|im_start|>");
        text.push_str(role.as_str());
        text.push('\n');
        text.push_str(said);
        text.push_str("<|im_end|>\n");
    }
    text.push_str("<|im_start|>assistant\n");
    text
}

/// One turn as ids.
struct Turn {
    /// The whole turn, tokenized as the template text would be.
    ids: Vec<u32>,
    /// `<|im_start|>{role}\n`, for a turn cut short.
    header: Vec<u32>,
    /// What was said, for a turn cut short.
    said: Vec<u32>,
    /// `<|im_end|>\n`.
    end: Vec<u32>,
}

impl Turn {
    fn new(tok: &GgufTokenizer, role: PromptRole, said: &str) -> Result<Self, LocalError> {
        let newline = tok.encode_templated("\n")?;
        let mut header = vec![tok.im_start];
        header.extend(tok.encode_plain(&format!("{}\n", role.as_str()))?);
        let mut end = vec![tok.im_end];
        end.extend(&newline);
        // The role and the text together, as in the template's text: the
        // byte-level split can join the newline with leading whitespace.
        let mut ids = vec![tok.im_start];
        ids.extend(tok.encode_plain(&format!("{}\n{said}", role.as_str()))?);
        ids.extend(&end);
        Ok(Self {
            ids,
            header,
            said: tok.encode_plain(said)?,
            end,
        })
    }

    /// The turn in at most `room` ids, keeping the end of what was said,
    /// or `None` when not even its header and one id fit.
    fn cut(&self, room: usize) -> Option<Vec<u32>> {
        let frame = self.header.len() + self.end.len();
        let keep = room.checked_sub(frame).filter(|&k| k > 0)?;
        let said = self.said.get(self.said.len().saturating_sub(keep)..)?;
        let mut ids = self.header.clone();
        ids.extend_from_slice(said);
        ids.extend_from_slice(&self.end);
        Some(ids)
    }
}

/// A prompt as ids.
pub(crate) struct Prompt {
    /// All of it.
    pub(crate) ids: Vec<u32>,
    /// How many of `ids` are the system turn it starts with (0 for none).
    pub(crate) system: usize,
}

/// The prompt as ids in at most `budget` ids.
///
/// Special tokens spelled out in what people wrote are read as text, so a
/// message can't open a turn of its own. When the conversation is too
/// long, the first system turn stays and the oldest of the rest go: whole
/// turns first, then the start of the oldest turn kept. If even the
/// system turn and the answer's header don't fit, the last `budget` ids
/// are kept.
pub(crate) fn prompt_ids(
    tok: &GgufTokenizer,
    turns: &[PromptTurn],
    default_system: &str,
    budget: usize,
) -> Result<Prompt, LocalError> {
    let all = with_system(turns, default_system);
    let mut body = all
        .iter()
        .map(|&(role, said)| Turn::new(tok, role, said))
        .collect::<Result<Vec<_>, _>>()?;
    let head = match all.first() {
        Some((PromptRole::System, _)) if !body.is_empty() => Some(body.remove(0)),
        _ => None,
    };
    let mut tail = vec![tok.im_start];
    tail.extend(tok.encode_plain("assistant\n")?);

    let head_len = head.as_ref().map_or(0, |h| h.ids.len());
    let total = head_len + body.iter().map(|t| t.ids.len()).sum::<usize>() + tail.len();
    let mut ids = Vec::with_capacity(total.min(budget));
    if let Some(head) = &head {
        ids.extend_from_slice(&head.ids);
    }
    if total <= budget {
        for turn in &body {
            ids.extend_from_slice(&turn.ids);
        }
        ids.extend_from_slice(&tail);
        return Ok(Prompt {
            ids,
            system: head_len,
        });
    }

    let Some(mut room) = budget.checked_sub(head_len + tail.len()) else {
        // Not even the system turn fits: the end of everything.
        let mut everything = ids;
        for turn in &body {
            everything.extend_from_slice(&turn.ids);
        }
        everything.extend_from_slice(&tail);
        let start = everything.len().saturating_sub(budget);
        return Ok(Prompt {
            ids: everything.split_off(start),
            system: 0,
        });
    };
    // Newest first: whole turns while they fit, then the end of one more.
    let mut kept: Vec<Vec<u32>> = Vec::new();
    for turn in body.iter().rev() {
        if turn.ids.len() <= room {
            room -= turn.ids.len();
            kept.push(turn.ids.clone());
        } else {
            kept.extend(turn.cut(room));
            break;
        }
    }
    for turn in kept.iter().rev() {
        ids.extend_from_slice(turn);
    }
    ids.extend_from_slice(&tail);
    Ok(Prompt {
        ids,
        system: head_len,
    })
}
