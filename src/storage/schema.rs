//! The schema, written once with portable SQL types (Text, BigInt, Double, Bool) so one
//! `table!` serves SQLite and PostgreSQL. Times are epoch milliseconds (UTC).

diesel::table! {
    users (user_id) {
        user_id -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    api_keys (key_id) {
        key_id -> Text,
        user_id -> Nullable<Text>,
        is_admin -> Bool,
        key_hash -> Text,
        created_at -> BigInt,
        revoked_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    sessions (session_id) {
        session_id -> Text,
        user_id -> Text,
        subdir -> Text,
        cwd -> Text,
        status -> Text,
        created_at -> BigInt,
        last_active_at -> BigInt,
        message_count -> BigInt,
        total_cost_usd -> Double,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
        metadata -> Text,
        options -> Text,
        cli_session_id -> Text,
        last_event_id -> BigInt,
        event_id_reserved -> BigInt,
        fork_from -> Nullable<Text>,
        resume_at -> Nullable<Text>,
        owner_instance -> Nullable<Text>,
        lease_generation -> BigInt,
        lease_expires_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    instances (instance_id) {
        instance_id -> Text,
        advertise_url -> Nullable<Text>,
        started_at -> BigInt,
        heartbeat_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        session_id -> Text,
        turn_id -> Text,
        role -> Text,
        text -> Text,
        tool_calls -> Text,
        created_at -> BigInt,
        cost_usd -> Nullable<Double>,
        cli_uuid -> Nullable<Text>,
    }
}

diesel::table! {
    events (session_id, event_id) {
        session_id -> Text,
        event_id -> BigInt,
        turn_id -> Text,
        payload -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    user_credentials (user_id) {
        user_id -> Text,
        sealed -> Text,
        names -> Text,
        updated_at -> BigInt,
    }
}

diesel::table! {
    user_budgets (user_id) {
        user_id -> Text,
        daily_usd -> Nullable<Double>,
        monthly_usd -> Nullable<Double>,
        per_session_usd -> Nullable<Double>,
        updated_at -> BigInt,
    }
}

diesel::table! {
    turn_usage (id) {
        id -> BigInt,
        user_id -> Text,
        session_id -> Text,
        turn_id -> Text,
        finished_at -> BigInt,
        cost_usd -> Double,
        input_tokens -> BigInt,
        output_tokens -> BigInt,
    }
}

diesel::table! {
    webhooks (webhook_id) {
        webhook_id -> Text,
        user_id -> Nullable<Text>,
        url -> Text,
        events -> Text,
        sealed_secret -> Text,
        include_text -> Bool,
        created_at -> BigInt,
    }
}

diesel::table! {
    webhook_deliveries (id) {
        id -> BigInt,
        webhook_id -> Text,
        message_id -> Text,
        event_type -> Text,
        payload -> Text,
        created_at -> BigInt,
        status -> Text,
        attempts -> BigInt,
        next_attempt_at -> Nullable<BigInt>,
        claimed_until -> Nullable<BigInt>,
        last_status_code -> Nullable<BigInt>,
        last_error -> Nullable<Text>,
        delivered_at -> Nullable<BigInt>,
    }
}

diesel::table! {
    webhook_budget_marks (user_id, budget_limit, period_start) {
        user_id -> Text,
        budget_limit -> Text,
        period_start -> Text,
        created_at -> BigInt,
    }
}

diesel::table! {
    openai_conversations (user_id, prefix_hash) {
        user_id -> Text,
        prefix_hash -> Text,
        session_id -> Text,
        created_at -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    users,
    api_keys,
    sessions,
    messages,
    events,
    user_credentials,
    user_budgets,
    turn_usage,
    webhooks,
    webhook_deliveries,
    webhook_budget_marks,
    openai_conversations,
    instances
);
