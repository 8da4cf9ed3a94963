-- Schema parley_user, owned by the user service.
-- Accounts, revoked sessions, the Signal key directory and the event outbox.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      varchar(64)  NOT NULL,
    email         varchar(255) NOT NULL,
    password_hash varchar(255) NOT NULL,
    created_at    timestamptz  NOT NULL DEFAULT now(),
    updated_at    timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);

-- Tokens revoked by logout before they expire; rows are purged after expiry.
CREATE TABLE revoked_tokens (
    jti        uuid PRIMARY KEY,
    user_id    uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX revoked_tokens_expires_at_idx ON revoked_tokens (expires_at);

-- One row per (user, device): the published prekey bundle (verbatim client JSON,
-- shallow-merged on re-publish) and the encrypted key backup (verbatim).
CREATE TABLE prekey_bundles (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid         NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id      varchar(255) NOT NULL,
    bundle         json         NOT NULL DEFAULT '{}',
    key_backup     json,
    last_backup_at timestamptz,
    created_at     timestamptz  NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz  NOT NULL DEFAULT now(),
    CONSTRAINT prekey_bundles_user_device_key UNIQUE (user_id, device_id)
);
CREATE INDEX prekey_bundles_user_created_idx ON prekey_bundles (user_id, created_at DESC);

-- Transactional outbox: events written with the change that caused them.
CREATE TABLE outbox (
    id          uuid PRIMARY KEY,
    routing_key text        NOT NULL,
    payload     jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX outbox_created_at_idx ON outbox (created_at, id);
