-- Schema parley_chat, owned by the chat service.
-- Messages, the chat service's projection of users, cluster-wide presence,
-- idempotency of consumed events, and the event outbox.

CREATE TYPE message_status AS ENUM ('NotDelivered', 'Delivered', 'Seen');

-- Envelopes are stored as the trimmed text the client sent, byte for byte.
CREATE TABLE messages (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sender_id    uuid           NOT NULL,
    receiver_id  uuid           NOT NULL,
    body         text           NOT NULL,
    is_encrypted boolean        NOT NULL DEFAULT true,
    status       message_status NOT NULL DEFAULT 'NotDelivered',
    created_at   timestamptz    NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz    NOT NULL DEFAULT clock_timestamp()
);
-- History between two users, newest first, in both directions.
CREATE INDEX messages_pair_created_idx ON messages (sender_id, receiver_id, created_at DESC);
CREATE INDEX messages_receiver_created_idx ON messages (receiver_id, created_at DESC);
-- Unread counts and mark-read.
CREATE INDEX messages_unread_idx ON messages (receiver_id, sender_id) WHERE status <> 'Seen';

-- Usernames (and addresses) of users, from user.registered events.
CREATE TABLE users (
    id         uuid PRIMARY KEY,
    username   varchar(64)  NOT NULL,
    email      varchar(255) NOT NULL,
    updated_at timestamptz  NOT NULL DEFAULT now()
);

-- Live chat processes; a replica whose heartbeat is older than the presence
-- TTL is dead, and its sessions are removed by a surviving replica.
CREATE TABLE replicas (
    id         uuid PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen  timestamptz NOT NULL DEFAULT now()
);

-- Which replica holds live sockets of which user.
CREATE TABLE presence_sessions (
    replica_id uuid    NOT NULL REFERENCES replicas (id) ON DELETE CASCADE,
    user_id    uuid    NOT NULL,
    sockets    integer NOT NULL CHECK (sockets > 0),
    PRIMARY KEY (replica_id, user_id)
);
CREATE INDEX presence_sessions_user_idx ON presence_sessions (user_id);

-- Events already applied (consumers are idempotent by event id).
CREATE TABLE consumed_events (
    event_id    uuid PRIMARY KEY,
    consumed_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id          uuid PRIMARY KEY,
    routing_key text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_created_at_idx ON outbox (created_at, id);

-- Session tokens revoked by logout (from auth.token_revoked events), so a
-- restarted chat replica still refuses them.
CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);
