-- An email may be queued before the receiver's address is known (the user's
-- registration event and the message event come from different services and
-- can arrive in either order): keep the user id and resolve the address when
-- sending.
ALTER TABLE emails ADD COLUMN user_id uuid;
ALTER TABLE emails ALTER COLUMN recipient DROP NOT NULL;
