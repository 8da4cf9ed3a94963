-- The latest message of every conversation, once per side: `GET
-- /chat/conversations` reads one user's rows instead of sorting all of their
-- messages. The message writer keeps it up to date in the transaction that
-- stores the messages (services/chat/src/writer.rs).
CREATE TABLE conversations (
    owner_id        uuid        NOT NULL,
    partner_id      uuid        NOT NULL,
    last_message_id uuid        NOT NULL,
    last_sender_id  uuid        NOT NULL,
    last_body       text        NOT NULL,
    last_at         timestamptz NOT NULL,
    PRIMARY KEY (owner_id, partner_id)
);

INSERT INTO conversations (owner_id, partner_id, last_message_id, last_sender_id, last_body, last_at)
SELECT DISTINCT ON (owner_id, partner_id) owner_id, partner_id, id, sender_id, body, created_at
FROM (
    SELECT sender_id AS owner_id, receiver_id AS partner_id, id, sender_id, body, created_at FROM messages
    UNION ALL
    SELECT receiver_id, sender_id, id, sender_id, body, created_at FROM messages
) both_sides
ORDER BY owner_id, partner_id, created_at DESC, id DESC;
