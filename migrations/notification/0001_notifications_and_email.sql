-- Schema parley_notification, owned by the notification service.
-- In-app notifications, the durable email queue, the service's projection of
-- users (their addresses), idempotency of consumed events, revoked tokens.

CREATE TYPE notification_type AS ENUM ('message', 'system', 'alert');

CREATE TABLE notifications (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid              NOT NULL,
    type       notification_type NOT NULL,
    title      varchar(255)      NOT NULL,
    message    text              NOT NULL,
    read       boolean           NOT NULL DEFAULT false,
    created_at timestamptz       NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz       NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX notifications_user_created_idx ON notifications (user_id, created_at DESC);
CREATE INDEX notifications_user_unread_idx ON notifications (user_id) WHERE NOT read;

-- Addresses and names of users, from user.registered events.
CREATE TABLE users (
    id         uuid PRIMARY KEY,
    username   varchar(64)  NOT NULL,
    email      varchar(255) NOT NULL,
    updated_at timestamptz  NOT NULL DEFAULT now()
);

-- Outgoing email, written in the same transaction as the notification that
-- caused it, and sent (with retries) by the mailer.
CREATE TYPE email_status AS ENUM ('pending', 'sent', 'failed');
CREATE TABLE emails (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recipient       varchar(255) NOT NULL,
    subject         text         NOT NULL,
    html_body       text         NOT NULL,
    text_body       text         NOT NULL,
    status          email_status NOT NULL DEFAULT 'pending',
    attempts        integer      NOT NULL DEFAULT 0,
    next_attempt_at timestamptz  NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz  NOT NULL DEFAULT clock_timestamp(),
    sent_at         timestamptz
);
CREATE INDEX emails_due_idx ON emails (next_attempt_at) WHERE status = 'pending';

CREATE TABLE consumed_events (
    event_id    uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);
