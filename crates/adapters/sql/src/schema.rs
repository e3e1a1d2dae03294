//! Table definitions, identical for both backends (see `migrations/`).

diesel::table! {
    users (id) {
        id -> Text,
        username -> Text,
        email -> Text,
        password_hash -> Text,
        role -> Text,
        disabled -> Bool,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    conversations (id) {
        id -> Text,
        user_id -> Text,
        title -> Text,
        last_message -> Nullable<Text>,
        is_archived -> Bool,
        deleted_at -> Nullable<BigInt>,
        created_at -> BigInt,
        updated_at -> BigInt,
        current_node -> Nullable<Text>,
        system_prompt -> Nullable<Text>,
        model -> Nullable<Text>,
    }
}

diesel::table! {
    messages (conversation_id, id) {
        conversation_id -> Text,
        id -> Text,
        position -> BigInt,
        parent_id -> Nullable<Text>,
        role -> Text,
        content -> Text,
        status -> Text,
        model_slug -> Nullable<Text>,
        metadata -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    usage_daily (user_id, day, model) {
        user_id -> Text,
        day -> Text,
        model -> Text,
        answers -> BigInt,
        estimated_answers -> BigInt,
        prompt_tokens -> BigInt,
        completion_tokens -> BigInt,
    }
}

diesel::table! {
    user_allowances (user_id) {
        user_id -> Text,
        daily_tokens -> Nullable<BigInt>,
        monthly_tokens -> Nullable<BigInt>,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Text,
        user_id -> Text,
        name -> Text,
        scopes -> Text,
        secret_digest -> Text,
        created_at -> BigInt,
        expires_at -> Nullable<BigInt>,
        last_used_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(conversations -> users (user_id));
diesel::joinable!(messages -> conversations (conversation_id));

diesel::table! {
    refresh_families (id) {
        id -> Text,
        user_id -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
        user_agent -> Nullable<Text>,
        client_addr -> Nullable<Text>,
        last_used_at -> Nullable<BigInt>,
        expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    refresh_tokens (jti) {
        jti -> Text,
        family_id -> Text,
        user_id -> Text,
        issued_at -> BigInt,
        expires_at -> BigInt,
        used_at -> Nullable<BigInt>,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::joinable!(refresh_tokens -> users (user_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    conversations,
    messages,
    refresh_families,
    refresh_tokens,
    api_keys
);
