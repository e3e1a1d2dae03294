//! Sending a message: validate, store the user message and the empty
//! assistant message, open the stream log and start the generation.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use confab_domain::{
    Content, Conversation, ConversationId, ConversationSettings, DomainError, ErrorCode, Field,
    Message, MessageDocument, MessageId, MessageMetadata, MessagePage, MessageRole, MessageStatus,
    ModelSlug, NewConversation, SystemPrompt, Title, UserId, events,
};
use confab_ports::{AccessClaims, ChatModel, CompletionRequest};
use tokio::sync::{oneshot, watch};

use super::generation::{AnswerEnd, Generation};
use super::prompt::build_prompt;
use super::{Conversations, Inner, Slot};
use crate::AppError;

/// What a send asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SendAction {
    /// A new user message under the parent, then its answer (an edit is a
    /// new question under the edited one's parent).
    #[default]
    Next,
    /// A new answer to a question already asked (regenerate): the parent
    /// is that user message; no message is sent.
    Variant,
    /// The model goes on with an answer that stopped early
    /// (`finished_partial_completion`), appending to it: the parent is
    /// that answer; no message is sent.
    Continue,
}

/// A message as a client sends it, before validation.
#[derive(Debug, Clone, Default)]
pub struct SendMessage {
    /// What the send asks for.
    pub action: SendAction,
    /// The conversation to continue; `None` starts a new one.
    pub conversation_id: Option<ConversationId>,
    /// Whether the conversation must be new (`POST /conversations`).
    pub must_be_new: bool,
    /// The message's id; generated when absent.
    pub message_id: Option<String>,
    /// For `next`, the message it follows (any of the conversation's: an
    /// edit is a new question under the edited one's parent); absent, the
    /// conversation's current node. For `variant`, the question to answer
    /// again (absent: the current node's). For `continue`, the answer to
    /// go on with (required).
    pub parent_message_id: Option<String>,
    /// A new conversation's own system prompt.
    pub system_prompt: Option<String>,
    /// The message's text parts (none for `variant` and `continue`).
    pub parts: Vec<String>,
    /// The model to use: absent or `default` for the configured default.
    pub model: Option<String>,
    /// Sampling temperature, 0..=2.
    pub temperature: Option<f64>,
    /// A `user_id` the client put in the body: must be the caller's.
    pub user_id: Option<String>,
    /// The caller's account-state version, as this request's admission
    /// read it: the send then uses the caller's own token allowance as
    /// this instance read it at that version (any change of it bumps the
    /// version), and reads what the caller used only when an allowance
    /// applies. `None`: read both.
    pub account_version: Option<u64>,
}

/// A generation that has started.
#[derive(Debug, Clone)]
pub struct Started {
    /// The conversation.
    pub conversation: Conversation,
    /// Whether this message created it.
    pub created: bool,
    /// The user message answered: the one sent, or for a variant or a
    /// continue the one already stored.
    pub user_message: Message,
    /// The assistant message being generated (`in_progress`): a new one,
    /// or for a continue the reopened one, with the text it had.
    pub assistant_message: Message,
    /// Set by the generation when it has ended (its text saved, its stream
    /// closed).
    ended: watch::Receiver<Option<AnswerEnd>>,
}

impl Started {
    /// Waits until the answer has ended (its final text and status are
    /// saved and its stream is closed) and says how. A generation that
    /// vanished without saying (the runtime shut down under it) counts as
    /// failed with `UNAVAILABLE`.
    pub async fn ended(&self) -> AnswerEnd {
        let mut ended = self.ended.clone();
        match ended.wait_for(Option::is_some).await {
            Ok(end) => end.unwrap_or(AnswerEnd::Failed(ErrorCode::Unavailable)),
            Err(_) => AnswerEnd::Failed(ErrorCode::Unavailable),
        }
    }
}

fn invalid(field: Field, message: &'static str) -> AppError {
    AppError::Validation {
        field,
        message: message.into(),
    }
}

/// `raw` as a message id; the id parser names the generic `id`, here it is
/// `field`.
fn parse_message_id(raw: String, field: Field) -> Result<MessageId, AppError> {
    MessageId::parse(raw).map_err(|e| match e {
        DomainError::Invalid { message, .. } => AppError::Validation { field, message },
        other => other.into(),
    })
}

impl Inner {
    /// The newest messages of the branch of `conversation` a new question
    /// goes `under` (down to the message named, or the current node; none
    /// at the root), oldest first, read backwards until their text exceeds
    /// the prompt budget or the branch starts, so a send never loads a long
    /// history whole.
    ///
    /// # Errors
    /// [`AppError::Conflict`] on `message_id` when the conversation
    /// already has a message with that id, on any branch (looked up by id
    /// beside the history read: the other branches are not read);
    /// [`AppError::Missing`] on `parent_message_id` when the message named
    /// is no message of the conversation.
    async fn prompt_history(
        &self,
        conversation: ConversationId,
        under: &Under,
        message_id: &MessageId,
    ) -> Result<Vec<Message>, AppError> {
        let messages = &self.ports.messages;
        let parent = match under {
            Under::Message(id) => Some(id),
            Under::Current | Under::Root => None,
        };
        let (history, taken, parent) = tokio::join!(
            async {
                if matches!(under, Under::Root) {
                    // A new first question: nothing above it.
                    return Ok(MessagePage::default());
                }
                self.read_back(
                    conversation,
                    parent,
                    usize::MAX,
                    text_chars,
                    self.rules.prompt_budget_chars,
                )
                .await
            },
            messages.find(conversation, message_id),
            async {
                match parent {
                    Some(id) => messages.find(conversation, id).await,
                    None => Ok(None),
                }
            },
        );
        let missing = AppError::Missing {
            field: Field::ParentMessageId,
        };
        let mut history = match history {
            Err(DomainError::NotFound) => return Err(missing),
            other => other?.messages,
        };
        if taken?.is_some() {
            return Err(AppError::Conflict {
                field: Field::MessageId,
            });
        }
        // Found: `read_back` found it too, or said `NotFound` above.
        if let Some(parent) = parent? {
            history.push(parent);
        }
        Ok(history)
    }

    /// The model a send names, checked against the configured ones;
    /// `None` when it names none (absent or `default`).
    fn model(&self, asked: Option<&str>) -> Result<Option<ModelSlug>, AppError> {
        match asked {
            None | Some("default") => Ok(None),
            Some(name) => {
                let slug = ModelSlug::parse(name)?;
                if self.allows(&slug) {
                    Ok(Some(slug))
                } else {
                    Err(invalid(Field::Model, "is not one of the configured models"))
                }
            }
        }
    }

    /// Whether `model` is one of the configured models.
    pub(super) fn allows(&self, model: &ModelSlug) -> bool {
        model == &self.rules.default_model || self.rules.allowed_models.contains(model)
    }

    /// The model a send uses: the one it names, else its conversation's
    /// (while still configured), else the service's default.
    fn model_for(&self, asked: Option<ModelSlug>, settings: &ConversationSettings) -> ModelSlug {
        asked
            .or_else(|| settings.model.clone().filter(|m| self.allows(m)))
            .unwrap_or_else(|| self.rules.default_model.clone())
    }

    /// Takes one of `user`'s generation slots, or refuses with 429.
    fn take_slot(self: &Arc<Self>, user: UserId) -> Result<Slot, AppError> {
        if *self.running.shutdown.borrow() {
            return Err(AppError::Unavailable("the server is shutting down".into()));
        }
        let cap = self.rules.max_concurrent_per_user;
        let mut map = self
            .running
            .per_user
            .lock()
            .map_err(|_| AppError::Internal("generation slots poisoned".into()))?;
        let n = map.entry(user).or_insert(0);
        if *n >= cap {
            return Err(AppError::TooManyGenerations { limit: cap });
        }
        *n += 1;
        self.running.total.fetch_add(1, Ordering::AcqRel);
        Ok(Slot {
            inner: self.clone(),
            user,
        })
    }
}

/// A send that passed validation, ready to start.
struct Request {
    owner: UserId,
    existing: Option<Conversation>,
    /// The conversation's settings (for a new one, those it starts with).
    settings: ConversationSettings,
    plan: Plan,
    engine: Engine,
}

/// Where a new question goes.
enum Under {
    /// Under the conversation's current node.
    Current,
    /// Under this message.
    Message(MessageId),
    /// At the root: a new first question (an edit of the first one).
    Root,
}

/// What a validated send writes.
enum Plan {
    /// A new question and its answer.
    Next {
        under: Under,
        message_id: MessageId,
        content: Content,
    },
    /// A new answer to the question `question` (`None`: the current
    /// node's).
    Variant { question: Option<MessageId> },
    /// More of the answer `answer`, which stopped early.
    Continue { answer: MessageId },
}

/// A send's messages and the branch its prompt is made of, before anything
/// is written.
struct Turn {
    /// The branch above the question, oldest first (within the prompt
    /// budget).
    history: Vec<Message>,
    /// The question: new for `next`, stored for the others.
    question: Message,
    /// The answer: new and empty, or the reopened one with its text.
    answer: Message,
    /// How the two are stored.
    write: Write,
}

/// How a turn is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    /// Both messages are new.
    Exchange,
    /// The answer is new; the question is stored already.
    Answer,
    /// The answer is stored and stopped early: it is reopened.
    Reopen,
}

/// What generates the answer, and how.
struct Engine {
    model: ModelSlug,
    /// The system prompt: the conversation's, else the service's.
    system_prompt: String,
    temperature: Option<f32>,
    chat_model: Arc<dyn ChatModel>,
}

impl Conversations {
    /// Stores the caller's message, creates the assistant's answer
    /// (`in_progress`) and starts generating it in a task of its own: the
    /// answer is finished and stored whether or not anyone reads the
    /// stream. Read the stream with [`Conversations::follow`].
    ///
    /// Once validation has passed, the work runs in a task of its own too:
    /// a caller that goes away mid-way (a dropped connection) can't leave a
    /// half-started answer behind.
    ///
    /// # Errors
    /// [`AppError::Validation`] on bad input; [`AppError::Forbidden`] when
    /// `user_id` is not the caller; [`AppError::NotFound`] for a missing or
    /// foreign conversation; [`AppError::Missing`] on `parent_message_id`
    /// when the parent is no message of the conversation (or the
    /// conversation is new); [`AppError::Conflict`] when the message id is
    /// taken; [`AppError::Busy`] when the conversation is still generating;
    /// [`AppError::TooManyGenerations`] or [`AppError::RateLimited`] over
    /// the caps; [`AppError::Unavailable`] when no model is configured or
    /// the server is shutting down.
    pub async fn send(
        &self,
        caller: &AccessClaims,
        mut input: SendMessage,
    ) -> Result<Started, AppError> {
        let inner = &self.inner;
        let owner = caller.user_id;
        if let Some(claimed) = &input.user_id {
            if claimed.contains('\0') {
                return Err(invalid(Field::UserId, "must not contain NUL"));
            }
            if claimed != &owner.to_string() {
                return Err(AppError::Forbidden);
            }
        }
        if input.must_be_new && input.conversation_id.is_some() {
            return Err(invalid(
                Field::ConversationId,
                "a new conversation gets its id from the server; continue one with POST /api/v1/conversations/{id}/messages",
            ));
        }
        let plan = Self::plan(&mut input)?;
        let asked = inner.model(input.model.as_deref())?;
        let system_prompt = match input.system_prompt.as_deref() {
            None => None,
            Some(_) if input.conversation_id.is_some() => {
                return Err(invalid(
                    Field::SystemPrompt,
                    "is set when a conversation starts, or by PATCH",
                ));
            }
            Some(text) => Some(SystemPrompt::parse(text)?),
        };
        let temperature = match input.temperature {
            None => None,
            Some(t) if (0.0..=2.0).contains(&t) =>
            {
                #[allow(clippy::cast_possible_truncation)]
                Some(t as f32)
            }
            Some(_) => return Err(invalid(Field::Temperature, "must be between 0 and 2")),
        };
        let Some(chat_model) = inner.ports.model.clone() else {
            return Err(AppError::Unavailable(
                "no chat model is configured (llm.provider)".into(),
            ));
        };
        if chat_model.saturated() {
            return Err(AppError::Unavailable("the model is busy".into()));
        }
        // Ownership and the allowance first, read together: a foreign or
        // missing conversation, or a user whose allowance is used up, costs
        // no slot and no budget.
        let (existing, ()) = tokio::try_join!(
            async {
                match input.conversation_id {
                    Some(id) => Ok(Some(inner.ports.conversations.get(owner, id).await?)),
                    None => Ok::<_, AppError>(None),
                }
            },
            inner.check_allowance(owner, input.account_version),
        )?;
        let slot = inner.take_slot(owner)?;
        // A new conversation keeps the model it was started with.
        let settings = match &existing {
            Some(c) => c.settings.clone(),
            None => ConversationSettings {
                system_prompt,
                model: asked.clone(),
            },
        };
        let request = Request {
            owner,
            existing,
            plan,
            engine: Engine {
                model: inner.model_for(asked, &settings),
                system_prompt: settings.system_prompt.as_ref().map_or_else(
                    || inner.rules.system_prompt.clone(),
                    |p| p.as_str().to_owned(),
                ),
                temperature,
                chat_model,
            },
            settings,
        };
        let this = self.clone();
        tokio::spawn(async move { this.begin(request, slot).await })
            .await
            .map_err(|e| AppError::Internal(format!("starting a generation failed: {e}").into()))?
    }

    /// What a send asks for, from its input alone (the input's message,
    /// ids and parts are taken).
    fn plan(input: &mut SendMessage) -> Result<Plan, AppError> {
        let parent = input
            .parent_message_id
            .take()
            .map(|id| parse_message_id(id, Field::ParentMessageId))
            .transpose()?;
        let new = input.conversation_id.is_none();
        if input.action != SendAction::Next {
            if !input.parts.is_empty() || input.message_id.is_some() {
                return Err(invalid(
                    Field::Messages,
                    "a variant or a continue sends no message: it answers one already asked",
                ));
            }
            if new {
                return Err(invalid(
                    Field::Action,
                    "a variant or a continue answers again in an existing conversation",
                ));
            }
        }
        match input.action {
            SendAction::Next => {
                let content = Content::user_text(std::mem::take(&mut input.parts))?;
                let message_id = match input.message_id.take() {
                    Some(id) => parse_message_id(id, Field::MessageId)?,
                    None => MessageId::generate(),
                };
                if message_id.is_root() {
                    return Err(invalid(
                        Field::MessageId,
                        "is reserved: it names the root above the first messages",
                    ));
                }
                let under = match parent {
                    None => Under::Current,
                    Some(root) if root.is_root() => Under::Root,
                    // A new conversation has no message to follow.
                    Some(_) if new => {
                        return Err(AppError::Missing {
                            field: Field::ParentMessageId,
                        });
                    }
                    Some(id) => Under::Message(id),
                };
                Ok(Plan::Next {
                    under,
                    message_id,
                    content,
                })
            }
            SendAction::Variant => Ok(Plan::Variant { question: parent }),
            SendAction::Continue => match parent {
                Some(answer) => Ok(Plan::Continue { answer }),
                None => Err(invalid(
                    Field::ParentMessageId,
                    "a continue names the answer to go on with",
                )),
            },
        }
    }

    /// Takes the generation's rate limit while it reads the turn and opens
    /// the stream log, starts the generation (the model is asked at once),
    /// stores the turn, announces it and lets the generation go on; on any
    /// failure, stops the generation and undoes what it did.
    async fn begin(&self, request: Request, slot: Slot) -> Result<Started, AppError> {
        let inner = &self.inner;
        let owner = request.owner;
        let created = request.existing.is_none();
        let conversation_id = request
            .existing
            .as_ref()
            .map_or_else(ConversationId::generate, |c| c.id);
        let open = |answer: MessageId| async move {
            inner
                .ports
                .log
                .open(conversation_id, &answer)
                .await
                .map_err(|e| match e {
                    DomainError::Duplicate { .. } => AppError::Busy,
                    other => other.into(),
                })
        };
        // The generation's limit is taken while the turn is read (and, for
        // a new conversation, its log opened: over Redis, the two round
        // trips go out together). Its refusal comes first, as if it had
        // been taken alone before anything else. The log of an existing
        // conversation is opened only once the limit allowed the send:
        // opening it replaces the stream of the answer before, which must
        // stay readable when the send is refused.
        let limited = owner.to_string();
        let (decision, ready) = tokio::join!(
            inner
                .ports
                .limiter
                .check(&inner.rules.generation_policy, &limited),
            async {
                // Checked before the log is opened, so a retried message
                // does not replace the stream of the answer it already has.
                let turn = inner
                    .turn(
                        conversation_id,
                        request.existing.as_ref(),
                        request.plan,
                        &request.engine.model,
                    )
                    .await?;
                let stop = if created {
                    Some(open(turn.answer.id.clone()).await?)
                } else {
                    None
                };
                Ok::<_, AppError>((turn, stop))
            },
        );
        let refused = match decision {
            Ok(decision) if decision.allowed => None,
            Ok(decision) => Some(AppError::RateLimited {
                policy: inner.rules.generation_policy.clone(),
                decision,
            }),
            Err(e) => Some(e.into()),
        };
        let (turn, stop) = match (refused, ready) {
            (None, ready) => ready?,
            (Some(refusal), Ok((_, Some(_)))) => {
                // A new conversation's log, which no one else can know of.
                if let Err(e) = inner.ports.log.close(conversation_id).await {
                    tracing::error!(error = %e, "could not close the log of a refused send");
                }
                return Err(refusal);
            }
            (Some(refusal), _) => return Err(refusal),
        };
        let stop = match stop {
            Some(stop) => stop,
            None => open(turn.answer.id.clone()).await?,
        };
        // The prompt: the branch down to the question, and for a continue
        // the answer so far (the model goes on from its end).
        let mut branch = turn.history.clone();
        branch.push(turn.question.clone());
        if turn.write == Write::Reopen {
            branch.push(turn.answer.clone());
        }
        let prompt = CompletionRequest {
            model: request.engine.model.clone(),
            turns: build_prompt(
                &branch,
                &request.engine.system_prompt,
                inner.rules.prompt_budget_chars,
            ),
            temperature: request.engine.temperature,
            max_tokens: inner.rules.max_tokens,
        };
        drop(branch);
        let prompt_chars = prompt.turns.iter().map(|t| t.text.chars().count()).sum();
        let (ended_tx, ended_rx) = watch::channel(None);
        let (stored_tx, stored_rx) = oneshot::channel();
        let generation = Generation {
            inner: inner.clone(),
            owner,
            conversation: conversation_id,
            created,
            message: turn.answer.clone(),
            first_text: turn.question.content.joined(),
            model: request.engine.model,
            chat_model: request.engine.chat_model,
            shutdown: inner.running.shutdown.subscribe(),
            ended: ended_tx,
            prompt_chars,
            reported: None,
        };
        tokio::spawn(generation.run(stop, slot, stored_rx, prompt));
        let stored = self
            .store_and_announce(owner, request.existing, request.settings, &turn)
            .await;
        match stored {
            Ok(conversation) => {
                // The generation may now release what the model says.
                let _ = stored_tx.send(());
                Ok(Started {
                    conversation,
                    created,
                    user_message: turn.question,
                    assistant_message: turn.answer,
                    ended: ended_rx,
                })
            }
            Err(e) => {
                drop(stored_tx);
                self.abandon(owner, conversation_id, created).await;
                Err(e)
            }
        }
    }

    /// Undoes a start that failed half-way: nothing is generated, so the
    /// log ends (no reader waits), a new conversation goes, and caches
    /// forget whatever was stored.
    async fn abandon(&self, owner: UserId, conversation: ConversationId, created: bool) {
        let ports = &self.inner.ports;
        if let Err(e) = ports.log.close(conversation).await {
            tracing::error!(error = %e, "could not close the log of an abandoned start");
        }
        if created {
            // NotFound: it was never stored.
            let _ = ports
                .conversations
                .soft_delete(owner, conversation, self.inner.now())
                .await;
        }
        self.inner.invalidate(owner, conversation).await;
    }

    /// Stores the turn (a new exchange, with the conversation in the same
    /// transaction when it is new; a new answer; or the answer reopened)
    /// and appends the stream's opening events; the conversation as
    /// stored.
    async fn store_and_announce(
        &self,
        owner: UserId,
        existing: Option<Conversation>,
        settings: ConversationSettings,
        turn: &Turn,
    ) -> Result<Conversation, AppError> {
        let inner = &self.inner;
        let messages = &inner.ports.messages;
        let (user_message, assistant_message) = (&turn.question, &turn.answer);
        let duplicate = |e| match e {
            DomainError::Duplicate { .. } => AppError::Conflict {
                field: Field::MessageId,
            },
            other => other.into(),
        };
        let conversation = match (existing, turn.write) {
            (Some(conversation), Write::Exchange) => {
                messages
                    .insert_exchange(user_message, assistant_message)
                    .await
                    .map_err(duplicate)?;
                conversation
            }
            (Some(conversation), Write::Answer) => {
                messages
                    .insert(assistant_message)
                    .await
                    .map_err(duplicate)?;
                conversation
            }
            (Some(conversation), Write::Reopen) => {
                let reopened = messages
                    .reopen(
                        conversation.id,
                        &assistant_message.id,
                        assistant_message.updated_at,
                    )
                    .await?;
                if !reopened {
                    // Continued (and finished) by another send meanwhile.
                    return Err(not_stopped());
                }
                conversation
            }
            (None, _) => messages
                .create_with_exchange(
                    NewConversation {
                        id: user_message.conversation_id,
                        owner,
                        title: Title::placeholder(),
                        settings,
                        created_at: user_message.created_at,
                    },
                    user_message,
                    assistant_message,
                )
                .await
                .map_err(duplicate)?,
        };
        let announce = async {
            let token = inner.ports.resume_tokens.issue_resume(
                owner,
                conversation.id,
                &assistant_message.id,
                assistant_message.created_at,
            )?;
            let opening = vec![
                events::delta_encoding(),
                events::resume_token(&token, conversation.id)?,
                events::input_message(&MessageDocument::of(user_message)?, conversation.id)?,
                events::add_message(&MessageDocument::of(assistant_message)?, conversation.id)?,
            ];
            inner
                .ports
                .log
                .append_all(conversation.id, opening)
                .await
                .map_err(AppError::from)
        };
        // Independent of each other, and both done before the caller sees
        // anything: over Redis they go out together.
        let ((), announced) = tokio::join!(inner.invalidate(owner, conversation.id), announce);
        if let Err(e) = announced {
            // The answer will never be generated: close it (a reopened one
            // as it was, so it can be continued again).
            let status = match turn.write {
                Write::Reopen => MessageStatus::FinishedPartialCompletion,
                Write::Exchange | Write::Answer => MessageStatus::Failed,
            };
            let _ = messages
                .update_content(
                    conversation.id,
                    &assistant_message.id,
                    &assistant_message.content,
                    status,
                    inner.now(),
                )
                .await;
            return Err(e);
        }
        Ok(conversation)
    }
}

/// The refusal of a continue of an answer that did not stop early.
fn not_stopped() -> AppError {
    invalid(
        Field::ParentMessageId,
        "a continue goes on with an answer that stopped early (finished_partial_completion)",
    )
}

/// A message's text length in characters: what the prompt budget counts.
fn text_chars(message: &Message) -> usize {
    message
        .content
        .parts()
        .iter()
        .map(|p| p.chars().count())
        .sum()
}

impl Inner {
    /// The turn a plan makes: the messages it writes and the branch above
    /// its question, read (and checked) before anything is written.
    async fn turn(
        &self,
        conversation: ConversationId,
        existing: Option<&Conversation>,
        plan: Plan,
        model: &ModelSlug,
    ) -> Result<Turn, AppError> {
        match plan {
            Plan::Next {
                under,
                message_id,
                content,
            } => {
                let history = match existing {
                    Some(c) => self.prompt_history(c.id, &under, &message_id).await?,
                    None => Vec::new(),
                };
                let created_at = self.now();
                let question = Message {
                    id: message_id,
                    conversation_id: conversation,
                    parent_id: history.last().map(|m| m.id.clone()),
                    role: MessageRole::User,
                    content,
                    status: MessageStatus::FinishedSuccessfully,
                    model_slug: None,
                    metadata: MessageMetadata::new(),
                    created_at,
                    updated_at: created_at,
                };
                let answer = self.new_answer(conversation, &question.id, model);
                Ok(Turn {
                    history,
                    question,
                    answer,
                    write: Write::Exchange,
                })
            }
            Plan::Variant { question } => {
                let Some(existing) = existing else {
                    return Err(AppError::NotFound);
                };
                let question = self.question_to_vary(existing, question.as_ref()).await?;
                let history = self.branch_above(conversation, &question.id).await?;
                let answer = self.new_answer(conversation, &question.id, model);
                Ok(Turn {
                    history,
                    question,
                    answer,
                    write: Write::Answer,
                })
            }
            Plan::Continue { answer } => {
                let missing = || AppError::Missing {
                    field: Field::ParentMessageId,
                };
                let messages = &self.ports.messages;
                let (found, history) = tokio::join!(
                    messages.find(conversation, &answer),
                    self.branch_above(conversation, &answer),
                );
                let mut answer = found?.ok_or_else(missing)?;
                if answer.role != MessageRole::Assistant
                    || answer.status != MessageStatus::FinishedPartialCompletion
                {
                    return Err(not_stopped());
                }
                let mut history = history?;
                // The newest of the branch above an answer is its question.
                let question = match history.pop() {
                    Some(q) if Some(&q.id) == answer.parent_id.as_ref() => q,
                    _ => return Err(not_stopped()),
                };
                answer.status = MessageStatus::InProgress;
                answer.updated_at = self.now();
                Ok(Turn {
                    history,
                    question,
                    answer,
                    write: Write::Reopen,
                })
            }
        }
    }

    /// The question a variant answers again: the one named, which must be
    /// a user message; unnamed, the current node when it is a question,
    /// else the question the current node answers.
    async fn question_to_vary(
        &self,
        conversation: &Conversation,
        named: Option<&MessageId>,
    ) -> Result<Message, AppError> {
        let missing = || AppError::Missing {
            field: Field::ParentMessageId,
        };
        let messages = &self.ports.messages;
        let id = named
            .or(conversation.current_node.as_ref())
            .ok_or_else(missing)?;
        let found = messages
            .find(conversation.id, id)
            .await?
            .ok_or_else(missing)?;
        match (found.role, named) {
            (MessageRole::User, _) => Ok(found),
            (MessageRole::Assistant, None) => {
                let parent = found.parent_id.as_ref().ok_or_else(missing)?;
                messages
                    .find(conversation.id, parent)
                    .await?
                    .filter(|m| m.role == MessageRole::User)
                    .ok_or_else(missing)
            }
            _ => Err(invalid(
                Field::ParentMessageId,
                "a variant answers a question again: name the user message, not an answer",
            )),
        }
    }

    /// The newest messages of the branch above the message `end` (its
    /// ancestors, without it), oldest first, within the prompt budget.
    async fn branch_above(
        &self,
        conversation: ConversationId,
        end: &MessageId,
    ) -> Result<Vec<Message>, AppError> {
        match self
            .read_back(
                conversation,
                Some(end),
                usize::MAX,
                text_chars,
                self.rules.prompt_budget_chars,
            )
            .await
        {
            Ok(page) => Ok(page.messages),
            Err(DomainError::NotFound) => Err(AppError::Missing {
                field: Field::ParentMessageId,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// A new answer to `question`, empty and `in_progress`.
    fn new_answer(
        &self,
        conversation: ConversationId,
        question: &MessageId,
        model: &ModelSlug,
    ) -> Message {
        let started_at = self.now();
        Message {
            id: MessageId::generate(),
            conversation_id: conversation,
            parent_id: Some(question.clone()),
            role: MessageRole::Assistant,
            content: Content::empty_text(),
            status: MessageStatus::InProgress,
            model_slug: Some(model.clone()),
            metadata: MessageMetadata::new(),
            created_at: started_at,
            updated_at: started_at,
        }
    }
}
