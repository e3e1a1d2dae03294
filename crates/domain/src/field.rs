//! The inputs a client can get wrong, as a type: the domain, the use cases
//! and the adapters say which input a failure is about with a [`Field`];
//! `confab-http` alone spells it as the client wrote it (a JSON path such
//! as `messages[0].id`, a header name, a query parameter).

/// An input named in a validation error or a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// A user's name.
    Username,
    /// A user's e-mail address.
    Email,
    /// A password.
    Password,
    /// The password a change of password presents as the current one.
    CurrentPassword,
    /// The password a change of password sets.
    NewPassword,
    /// A user's role.
    Role,
    /// Whether an account is disabled.
    Disabled,
    /// A conversation's title.
    Title,
    /// The page size of a list.
    Limit,
    /// Where a page of a list starts.
    Offset,
    /// The message a page of a history ends before.
    Before,
    /// The message a conversation's current branch ends at.
    CurrentNode,
    /// The order of a list.
    Order,
    /// A search query.
    Query,
    /// A user's id.
    UserId,
    /// A conversation's id.
    ConversationId,
    /// A token's id (`jti`).
    TokenId,
    /// A login session's id (`sid`).
    SessionId,
    /// An id in the form of a message id, where it is not a sent message's.
    Id,
    /// The id of the message being sent.
    MessageId,
    /// The message a sent message follows (its parent).
    ParentMessageId,
    /// What a send asks for: `next`, `variant` or `continue`.
    Action,
    /// A tree page's cursor: the message after which it starts.
    After,
    /// The messages a send carries.
    Messages,
    /// The role of the message being sent.
    MessageRole,
    /// A message's content type.
    ContentType,
    /// A message's text parts.
    ContentParts,
    /// A message's status.
    MessageStatus,
    /// The model asked for.
    Model,
    /// A conversation's system prompt.
    SystemPrompt,
    /// The confirmation of a change that can't be undone.
    Confirm,
    /// The sampling temperature asked for.
    Temperature,
    /// The resume token a stream gave.
    ResumeToken,
    /// The id of the last stream event a reader saw.
    LastEventId,
    /// The first day of a report.
    From,
    /// The last day of a report.
    To,
    /// A user's own daily token allowance.
    DailyTokens,
    /// A user's own monthly token allowance.
    MonthlyTokens,
    /// An API key's name.
    Name,
    /// An API key's scopes.
    Scopes,
    /// How many days a new API key lasts.
    ExpiresInDays,
}
